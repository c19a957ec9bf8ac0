"""aioelastic: asyncio-native distributed cron jobs with sharding over ZooKeeper."""
