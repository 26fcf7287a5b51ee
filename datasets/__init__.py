"""Dataset manifests, real-data sources, brand-mark rendering, synthetic photos and counterfeit transforms."""
