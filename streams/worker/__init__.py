"""The worker: the processor, the Faust app, evaluation rounds, replay and telemetry."""
