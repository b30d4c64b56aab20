"""foliowatch.detector"""
