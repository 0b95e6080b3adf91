"""Async jobs' wire types: the status of a job, and what ``GET`` answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from iir.api.chat.protocol import ChatCompletion
from iir.api.infer.protocol import InferResponse
from iir.core.protocol import ChatRequest

JobId = Annotated[str, Field(pattern=r"^job_[0-9a-f]{32}$")]
Status = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class AsyncChatRequest(ChatRequest):
    """A chat request run as a job: the same fields, but its answer is stored, never streamed."""

    stream: Literal[False] = False


class JobError(BaseModel):
    """The error the synchronous call would have given."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class JobStatus(BaseModel):
    """A job that has not succeeded (yet): its id and status; ``error`` once it failed."""

    job_id: JobId
    status: Status
    error: JobError | None = None


#: ``GET``'s answer: the stored result once the job succeeded (the chat.completion, or the /infer
#: answer for jobs submitted there; header ``x-iir-job-status: succeeded``), else its status.
JobResult = ChatCompletion | InferResponse | JobStatus
