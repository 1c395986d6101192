"""Stand-ins of remote inputs, for tests and benchmarks only: never data, never skill.

Each stand-in has the layout, shapes, names and chunking of a real remote input (ARCO-ERA5,
CPC PSL yearly files, NOAA daily OLR, FengWu's ONNX files) and physically plausible values, and
is labelled as a stand-in in its attributes. ``server`` serves a folder over HTTP on loopback,
optionally injecting transient faults, so the remote code path is exercised for real.
"""
