"""Baseline autoscalers the learned policy is compared against."""
