"""Interpretability views: top-activating contexts and feature density per SAE, cross-domain generalisation."""
