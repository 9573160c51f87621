"""Alert delivery: the signed decisions on Kafka, verified and delivered to the people who must act on them.

=================  ====================================================================================
module             what it is
=================  ====================================================================================
``intake``         pure: one Kafka message -> a verified event / audit entry, or a rejection with its reason
``notices``        pure: the :class:`~governance.service.alerting.notices.Notice` receivers get, its labels
``tracker``        pure: the fold of verified inputs into open conditions and the notices each input yields
``payloads``       pure: a notice as Alertmanager API v2, a signed JSON webhook, Slack and PagerDuty bodies
``config``         the receivers YAML file, validated strictly (unknown keys refused in one line)
``delivery``       HTTP delivery with its outcome classified (delivered / retry / refused), backoff, receivers
``forwarder``      the process: read and verify the topics, one delivery lane per receiver, commits, DLQ
``metrics``        its Prometheus metrics, open conditions read at scrape time
``server``         ``/metrics``, ``/healthz``, ``/readyz``
=================  ====================================================================================

``shadowgate alerts tail`` and ``shadowgate alerts forward`` (``shadowgate/commands/alerts.py``) run them.
"""
