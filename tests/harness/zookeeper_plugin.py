"""ZooKeeper fixtures (filled in by the ZooKeeper harness)."""
