"""foliowatch.pipeline"""
