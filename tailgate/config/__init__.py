"""Configuration: the frozen model, the HuJSON loader and validator, and hot reload."""
