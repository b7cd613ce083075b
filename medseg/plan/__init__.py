"""medseg.plan"""
