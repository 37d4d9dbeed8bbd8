"""What each policy package may answer: one typed model per entry point.

An engine's answer is untrusted text until it has been parsed strictly and validated here: a
policy with a bug, a reload that changed a rule's shape, or an engine that mis-escapes a string
taken from the input (regopy writes strings into its JSON output unescaped, so a file name
holding `"` can add keys to the decision) must never be read as a decision by `.get()` guesses.
The outputs of the three packages are fixed, so every model refuses unknown keys and missing
ones; values are checked for type (strictly: no number for a string, no `true` for a count),
range and the combinations the callers rely on (a grant has a mode and an expiry). Whatever does
not fit is a denial with reason `policy_error` (controller.policy).

The models are the engines' common contract: the embedded interpreter and an OPA server are
held to the same shapes.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

from catalog.model import ORG_ID
from catalog.vocab import AccessMode

POLICY_ERROR = "policy_error"

# Bounds: generous beside the reference data (policies/data), tight enough that nothing a
# caller stores or hands to a sandbox can overflow or be absurd.
MAX_REASONS = 1000
MAX_TEXT = 10_000
MAX_REVIEWERS = 100
MAX_ITEMS = 10_000


def _day(value: str) -> str:
    """A calendar day as the policies write it, YYYY-MM-DD."""
    if len(value) != 10 or dt.date.fromisoformat(value).isoformat() != value:
        raise ValueError("must be a date YYYY-MM-DD")
    return value


Day = Annotated[StrictStr, AfterValidator(_day)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT)]
Organisation = Annotated[StrictStr, Field(pattern=ORG_ID)]
Count = Annotated[int, Field(ge=0, le=1 << 31)]


class PolicyResult(BaseModel):
    """What every decision holds: the reasons, each `code: sentence`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reasons: list[Text] = Field(max_length=MAX_REASONS)


# ------------------------------------------------------------------ bulles.access


class AccessParameters(BaseModel):
    """The view a grant allows: its columns, what is pseudonymised, generalised or dropped, and
    the k-anonymity and aggregation thresholds in force."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    columns: list[Name] = Field(max_length=MAX_ITEMS)
    pseudonymised: list[Name] = Field(max_length=MAX_ITEMS)
    generalised: list[Name] = Field(max_length=MAX_ITEMS)
    dropped: list[Name] = Field(max_length=MAX_ITEMS)
    k: Annotated[int, Field(ge=1, le=1_000_000)] | None
    threshold: Annotated[int, Field(ge=1, le=1_000_000)] | None


class AccessReviewers(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    role: Literal["provider"]
    organisation: Organisation
    count: Annotated[int, Field(ge=1, le=MAX_REVIEWERS)]


class AccessDecision(PolicyResult):
    status: Literal["granted", "pending_review", "denied"]
    mode: AccessMode | None = Field(strict=False)  # the value as the policy writes it ("raw")
    parameters: AccessParameters
    expiry: Day | None
    reviewers: list[AccessReviewers] = Field(max_length=MAX_REVIEWERS)
    notify: list[Organisation] = Field(max_length=MAX_REVIEWERS)

    @model_validator(mode="after")
    def _consistent(self) -> "AccessDecision":
        if self.status == "denied":
            if self.mode is not None or self.expiry is not None:
                raise ValueError("a denial grants no mode and no expiry")
        elif self.mode is None or self.expiry is None:
            raise ValueError(f"status '{self.status}' needs a mode and an expiry")
        if (self.status == "pending_review") != bool(self.reviewers):
            raise ValueError("reviewers are named exactly when the status is 'pending_review'")
        return self


# ------------------------------------------------------------------ bulles.bubble


class BubbleProfile(PolicyResult):
    allowed: bool
    network: Literal["none", "open"]
    cpu: Annotated[int, Field(ge=0, le=1024)] | Annotated[float, Field(ge=0, le=1024, allow_inf_nan=False)]
    memory_mb: Annotated[int, Field(ge=0, le=1 << 30)]
    disk_mb: Annotated[int, Field(ge=0, le=1 << 30)]
    lifetime_hours: (Annotated[int, Field(ge=0, le=24 * 366 * 10)]
                     | Annotated[float, Field(ge=0, le=24 * 366 * 10, allow_inf_nan=False)])
    expires: Day | None

    @model_validator(mode="after")
    def _consistent(self) -> "BubbleProfile":
        if self.allowed and min(self.cpu, self.memory_mb, self.disk_mb, self.lifetime_hours) <= 0:
            raise ValueError("an allowed bubble needs positive cpu, memory_mb, disk_mb and lifetime_hours")
        if not self.allowed and self.network != "none":
            raise ValueError("a refused bubble has no network")
        return self


# ------------------------------------------------------------------ bulles.export


class ExportDecision(PolicyResult):
    action: Literal["release", "review", "refuse"]
    reviewers: Annotated[int, Field(ge=0, le=MAX_REVIEWERS)]
    organisations: list[Organisation] = Field(max_length=MAX_REVIEWERS)

    @model_validator(mode="after")
    def _consistent(self) -> "ExportDecision":
        if self.action == "review" and self.reviewers < 1:
            raise ValueError("a review needs at least one reviewer")
        if self.action != "review" and (self.reviewers or self.organisations):
            raise ValueError(f"action '{self.action}' names no reviewer and no organisation")
        return self


MODELS: dict[str, type[PolicyResult]] = {"access": AccessDecision, "bubble": BubbleProfile, "export": ExportDecision}


def denial(package: str, message: str) -> PolicyResult:
    """The most closed answer of a package, with the reason it was forced."""
    reasons = [f"{POLICY_ERROR}: {message}"[:MAX_TEXT]]
    if package == "access":
        nothing = AccessParameters(columns=[], pseudonymised=[], generalised=[], dropped=[], k=None, threshold=None)
        return AccessDecision(status="denied", mode=None, parameters=nothing, expiry=None, reviewers=[], notify=[],
                              reasons=reasons)
    if package == "bubble":
        return BubbleProfile(allowed=False, network="none", cpu=0, memory_mb=0, disk_mb=0, lifetime_hours=0,
                             expires=None, reasons=reasons)
    if package == "export":
        return ExportDecision(action="refuse", reviewers=0, organisations=[], reasons=reasons)
    return PolicyResult(reasons=reasons)
