"""medseg.export"""
