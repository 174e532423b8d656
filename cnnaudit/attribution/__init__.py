"""Attribution: Grad-CAM family (``cam``), guided backprop / deconvnet (``guided``) and targets (``targets``).

The public entry points are ``Subject.gradcam`` and ``Subject.saliency``; the modules here hold
the pure per-method functions and the per-batch engines those methods run.
"""
