"""Baseline recommenders, each a RecBole ``SequentialRecommender`` registered in the harness."""
