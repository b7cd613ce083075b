"""medseg.cells"""
