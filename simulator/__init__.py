"""foliowatch.simulator"""
