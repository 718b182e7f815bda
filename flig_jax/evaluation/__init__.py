"""Evaluation: decoding and encoding metrics, ridge and MLP baselines, figures and reports."""
