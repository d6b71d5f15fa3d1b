"""Datasets: the MVTec AD folder layout and the built-in synthetic ``weld`` category."""
