"""Local replay of the CVPR 2025 interactive 3D segmentation evaluation (the organizer's protocol).

Modules, one stage each: boxes (box prompts), clicks (click simulator), surfels + metrics (DSC,
NSD, AUC), predictors (how a predictor is run), harness (the step loop), baselines, report (CSV,
table, plot), bench (timing of one step). Arrays are (z, y, x); a stored spacing is (x, y, z).
"""
