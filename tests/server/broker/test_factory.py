"""create_broker picks the implementation, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.broker import MemoryBroker, RedisBroker, create_broker


async def test_no_redis_url_means_the_in_memory_broker() -> None:
    broker = create_broker(None)
    assert isinstance(broker, MemoryBroker)
    await broker.close()


async def test_a_redis_url_means_the_redis_broker_with_its_prefix() -> None:
    broker = create_broker("redis://127.0.0.1:1/0", prefix="test:")
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "test:"
    await broker.close()


@pytest.mark.slow
def test_importing_the_package_does_not_import_redis() -> None:
    code = "import sys, server.broker; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.slow
def test_the_contract_and_its_readers_do_not_import_redis() -> None:
    """The channels, the backoff, the fan-out and their readers in the server load redis only
    when a Redis broker is made."""
    modules = "server.broker.channels, server.broker.fanout, schema.live.hub, schema.prices.cache"
    code = f"import sys, {modules}; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
