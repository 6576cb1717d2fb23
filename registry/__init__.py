"""The registry index of published encoders and experts, installed as ``cohere._registry``."""
