"""netspark: zero-copy buffer management and an RDMA/TCP shuffle transport for PySpark.

Layers, each a subpackage, depending only on those listed before it:
`buffer_manager` (the shared arena of pinned blocks), `serde` (streams and records
over blocks), `transport` (wire protocol, TCP, local, RDMA).
"""

__version__ = "0.1.0"
