"""Customer.io email activity webhooks into Hull.

Two halves that share only the `webhook_inbox` table:
- the intake (`app`): an always-on HTTP endpoint that verifies the signature
  (`signature`) and commits each raw payload (`inbox`) before answering, so Customer.io
  gets its 2xx fast and nothing is lost if Hull is down;
- the drain (`cio_sync.pipeline.drain`, `flows.drain_webhooks`): claims stored rows, maps them to
  Hull track events (`mapping`) and sends them through the firehose.

The operational knobs of both halves live in `cio_sync/settings.py` (`WebhookSettings`).
"""

from __future__ import annotations
