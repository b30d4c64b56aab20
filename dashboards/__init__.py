"""foliowatch.dashboards"""
