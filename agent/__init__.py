"""foliowatch.agent"""
