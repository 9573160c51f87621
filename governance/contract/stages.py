"""The lifecycle's stages and model types: names every process uses (events, facts, gates, the registry).

The state machine over them (allowed transitions, stage gates) is the lifecycle's
(:mod:`governance.lifecycle.machine`); the per-type shadow rules are the policy's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

__all__ = ["MODEL_TYPES", "GatedStage", "ModelType", "Stage"]


class Stage(StrEnum):
    """The seven lifecycle stages of spec 1.1."""

    PROPOSAL = "PROPOSAL"
    PROTOTYPE = "PROTOTYPE"
    TRAINING = "TRAINING"
    SHADOW = "SHADOW"
    STAGING = "STAGING"
    PRODUCTION = "PRODUCTION"
    RETIRED = "RETIRED"


# The stages whose exit (or stay, for PRODUCTION) the worker's gates and triggers judge.
GatedStage = Literal["SHADOW", "STAGING", "PRODUCTION"]

# The shadow-duration class of spec 3.1.
ModelType = Literal["risk_scoring", "classification", "anomaly_detection", "ranking"]
MODEL_TYPES: tuple[ModelType, ...] = get_args(ModelType)
