"""The arena of fixed-size blocks shared by the processes of one executor."""

from netspark.buffer_manager.arena import Arena, ArenaError, ArenaStats, HugepagesUnavailable
from netspark.buffer_manager.pool import BlockPool, PoolExhausted

__all__ = ["Arena", "ArenaError", "ArenaStats", "BlockPool", "HugepagesUnavailable",
           "PoolExhausted"]
