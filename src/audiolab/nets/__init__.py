"""Plain ``nn.Module`` networks with explicit keyword arguments (no config objects)."""
