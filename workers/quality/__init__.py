"""Data quality: schema drift of what sources send (`drift`) and outliers of runs and prices
(`anomalies`, `price_anomalies`). Findings are rows of drift_events and anomalies; no price is
dropped for being unusual, and only rows whose meaning is in doubt are held back.
"""
