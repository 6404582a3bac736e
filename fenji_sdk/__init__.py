"""The data scientists' SDK for the Fenji coordinator: tasks, model versions with per-site metrics,
the sites and their reports, training jobs, federated statistics and the audit trail, as DataFrames::

    import fenji_sdk
    from fenji_sdk import Count

    with fenji_sdk.Client("http://127.0.0.1:8500", token) as fenji:
        fenji.versions("referral_risk")
        fenji.query(Count(group_by="avpu"), task="referral_risk").to_frame()

A shell over the coordinator's HTTP API: it imports only the query types of ``federation.analytics``.
"""

from __future__ import annotations

from federation.analytics import Count, CrossTab, Histogram, Mean
from fenji_sdk._surveillance import SurveillanceRun
from fenji_sdk.client import Client, QueryResult
from fenji_sdk.errors import (
    Conflict,
    Forbidden,
    Invalid,
    JobFailed,
    NotAuthenticated,
    NotFound,
    SdkError,
    WaitTimeout,
)

__all__ = ["Client", "Conflict", "Count", "CrossTab", "Forbidden", "Histogram", "Invalid", "JobFailed", "Mean",
           "NotAuthenticated", "NotFound", "QueryResult", "SdkError", "SurveillanceRun", "WaitTimeout"]
