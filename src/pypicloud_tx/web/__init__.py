"""The HTTP layer: parse requests, identify callers, call one service method, render."""
