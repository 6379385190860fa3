"""Moving extents between executor servers: protocol, tcp, local, rdma."""
