"""Post-processing of label maps and probability maps.

``components``: connected-component cleanup (largest component, small-object removal).
``watershed``: marker-controlled watershed that separates touching instances (2D and 3D).
``classical``: instances without training (threshold + distance-transform watershed, size estimated).
``morphology``: the distance transform and regional maxima behind the watershed's markers (SciPy's and
scikit-image's results, faster).
``votes``: instances by following predicted offsets to object centres.
``contrast``: dropping objects no brighter than the image's background noise.
``merge``: merging fragments back into their neighbour across borders the network does not call boundary.
"""
