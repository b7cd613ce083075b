"""Post-processing of label maps and probability maps.

``components``: connected-component cleanup (largest component, small-object removal).
``watershed``: marker-controlled watershed that separates touching instances (2D and 3D).
"""
