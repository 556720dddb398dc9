"""Drive a Principia coordinator through SeekrFlow's own Python SDK (`seekrai` 0.35), unchanged.

Run by tests/tests/sdk.rs with the repository's .venv python:

    check_seekrai.py cancel    # coordinator without workers: a job cancelled mid-way
    check_seekrai.py complete  # with a worker: every files and alignment method end to end

Environment: PRINCIPIA_URL (the coordinator), SDK_KEY (a tenant's key), SDK_OTHER_KEY (another
tenant's key), EXAMPLE (a Markdown policy), WORK (a scratch directory), CANCELLED_JOB (for
`complete`: the job the `cancel` phase cancelled). Every check is an assertion; the last line of
stdout is a JSON summary that the Rust test checks again.
"""

import json
import os
import pathlib
import sys
import time

import pyarrow.parquet as pq
from seekrai import SeekrFlow
from seekrai.error import AuthenticationError, InvalidRequestError

URL = os.environ["PRINCIPIA_URL"]
KEY = os.environ["SDK_KEY"]
OTHER_KEY = os.environ["SDK_OTHER_KEY"]
EXAMPLE = pathlib.Path(os.environ["EXAMPLE"])
WORK = pathlib.Path(os.environ["WORK"])
INSTRUCTIONS = "I want a chatbot that specializes in Harbor's lending policy"
SYSTEM_PROMPT = "You answer questions about Harbor Community Credit Union's lending policy."

client = SeekrFlow(api_key=KEY, base_url=URL)


def wait_for(job_id, statuses, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        job = client.alignment.retrieve(job_id)
        if job.status.value in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck in {job.status}: {job}"
        time.sleep(0.2)


def upload_example():
    uploaded = client.files.upload(EXAMPLE, purpose="alignment")
    assert uploaded.id.startswith("file-"), uploaded
    assert uploaded.purpose.value == "alignment", uploaded
    assert uploaded.filename == EXAMPLE.name, uploaded
    assert uploaded.bytes == EXAMPLE.stat().st_size, uploaded
    return uploaded


def cancel_phase():
    document = upload_example()
    job = client.alignment.generate(instructions=INSTRUCTIONS, files=[document.id])
    assert job.id.startswith("al-"), job
    assert job.status.value in ("pending", "queued", "running"), job
    # No worker yet: the shards are published and wait in the queue.
    running = wait_for(job.id, ("running",))
    cancelled = client.alignment.cancel(job.id)
    assert cancelled.status.value == "cancelled", cancelled
    assert cancelled.stopped_at is not None, cancelled
    assert "finished shards are kept" in cancelled.status_message, cancelled
    again = client.alignment.retrieve(job.id)
    assert again.status.value == "cancelled", again
    assert client.alignment.outputs(job.id) == []
    return {
        "phase": "cancel",
        "job_id": job.id,
        "status_before": running.status.value,
        "status": again.status.value,
    }


def complete_phase():
    cancelled_job = os.environ["CANCELLED_JOB"]

    # Files: the SDK validates alignment files' metadata on the server before uploading.
    document = upload_example()
    bad = WORK / "tool.exe"
    bad.write_bytes(b"MZ")
    try:
        client.files.upload(bad, purpose="alignment")
        raise AssertionError("an .exe alignment file was accepted")
    except ValueError as error:
        validation_error = str(error)
    assert '"exe" is not accepted' in validation_error, validation_error
    data = WORK / "train.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "Who may apply for a loan?"},'
        ' {"role": "assistant", "content": "Any member of the credit union may apply."}]}\n'
    )
    training = client.files.upload(data, purpose="fine-tune")
    assert training.purpose.value == "fine-tune" and training.type.value == "jsonl", training

    retrieved = client.files.retrieve(document.id)
    assert retrieved.id == document.id and retrieved.type.value == "md", retrieved
    alignment_files = client.files.list(purpose="alignment").data
    assert document.id in [f.id for f in alignment_files], alignment_files
    assert training.id not in [f.id for f in alignment_files], alignment_files
    assert all(f.purpose.value == "alignment" for f in alignment_files), alignment_files
    page = client.files.list(limit=1, offset=0, sort_by="filename", sort_order="asc")
    assert [f.filename for f in page.data] == [EXAMPLE.name], page
    copy = client.files.retrieve_content(document.id, output=WORK / "copy.md")
    assert pathlib.Path(copy.filename).read_bytes() == EXAMPLE.read_bytes()
    assert copy.size == EXAMPLE.stat().st_size

    # A job to the end.
    job = client.alignment.generate(
        instructions=INSTRUCTIONS, files=[document.id], system_prompt=SYSTEM_PROMPT
    )
    done = wait_for(job.id, ("completed", "failed"))
    assert done.status.value == "completed", done
    assert done.progress == 100.0, done
    assert done.current_step == "done", done
    outputs = client.alignment.outputs(job.id)
    assert len(outputs) == 1, outputs
    dataset = outputs[0]
    assert dataset.purpose.value == "fine-tune" and dataset.file_type.value == "parquet", dataset
    assert [o.id for o in done.output_files] == [dataset.id], done
    downloaded = client.files.retrieve_content(dataset.id, output=WORK / "dataset.parquet")
    assert downloaded.size == dataset.bytes, (downloaded, dataset)
    table = pq.read_table(downloaded.filename)
    rows = table.to_pylist()
    assert rows, "the dataset is empty"
    assert all(r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} for r in rows)
    assert all(r["messages"][-1]["role"] == "assistant" and r["answer"] for r in rows)

    jobs = {j.id: j.status.value for j in client.alignment.list().data}
    assert jobs.get(job.id) == "completed" and jobs.get(cancelled_job) == "cancelled", jobs

    # Auth: a wrong key is refused; another tenant sees none of this.
    try:
        SeekrFlow(api_key="pk-" + "0" * 64, base_url=URL).files.list()
        raise AssertionError("a wrong key was accepted")
    except AuthenticationError as error:
        wrong_key_status = error.http_status
    other = SeekrFlow(api_key=OTHER_KEY, base_url=URL)
    cross_tenant = {}
    for name, call in [
        ("files.retrieve", lambda: other.files.retrieve(document.id)),
        ("alignment.retrieve", lambda: other.alignment.retrieve(job.id)),
        ("alignment.outputs", lambda: other.alignment.outputs(job.id)),
        ("alignment.cancel", lambda: other.alignment.cancel(job.id)),
        ("files.delete", lambda: other.files.delete(document.id)),
    ]:
        try:
            call()
            raise AssertionError(f"{name} reached another tenant's object")
        except InvalidRequestError as error:
            cross_tenant[name] = error.http_status
    assert other.files.list().data == [] and other.alignment.list().data == []

    # Deletion.
    client.alignment.delete(job.id)
    try:
        client.alignment.retrieve(job.id)
        raise AssertionError("a deleted job is still there")
    except InvalidRequestError as error:
        deleted_job_status = error.http_status
    deleted = client.files.delete(document.id)
    assert deleted.deleted and deleted.id == document.id, deleted
    remaining = [f.id for f in client.files.list().data]
    assert document.id not in remaining, remaining

    return {
        "phase": "complete",
        "file_id": document.id,
        "job_id": job.id,
        "status": done.status.value,
        "dataset": {
            "id": dataset.id,
            "purpose": dataset.purpose.value,
            "file_type": dataset.file_type.value,
            "bytes": dataset.bytes,
            "rows": len(rows),
        },
        "jobs": jobs,
        "validation_error": validation_error,
        "wrong_key_status": wrong_key_status,
        "cross_tenant_status": cross_tenant,
        "deleted_job_status": deleted_job_status,
        "file_deleted": deleted.deleted,
    }


if __name__ == "__main__":
    phases = {"cancel": cancel_phase, "complete": complete_phase}
    summary = phases[sys.argv[1]]()
    print(json.dumps(summary))
