"""The engine: every model is a ``torch.nn.Module`` that evaluates a structure in log-space, layer by layer."""
