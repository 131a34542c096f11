"""The local GCS emulator the gs:// tests run: gcp-storage-emulator's CLI with fixes that bring it closer to GCS.

- Object reads (`GET …/o/OBJ?alt=media` and the download routes) carry the generation headers real GCS sends
  (`x-goog-generation`, `x-goog-metageneration`). tensorstore (orbax's storage layer) takes an object's generation
  from them and writes OCDBT's `manifest.ocdbt` on the condition that it is unchanged; without them the condition is
  "Malformed StorageGeneration". The `get` handler calls the module's `download` by name, so both are patched.
- The generation preconditions GCS honours and the emulator ignores: `ifGenerationMatch` (0 = only if absent) on
  uploads and reads answers 412, `ifGenerationNotMatch` on a read of that very generation answers 304.
- Connections are accepted by many threads with a deep backlog (requests are still handled one at a time): the
  emulator's single-threaded HTTP/1.0 server with a backlog of 5 drops some of the many parallel connections an
  orbax save opens.

    python tests/gcs_emulator.py start --host 127.0.0.1 --port PORT --in-memory --default-bucket BUCKET
"""
from __future__ import annotations

import sys
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download
_insert = objects.insert


def _query(request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _stored(storage, bucket: str, name: str) -> dict | None:
    """The object's metadata, None when there is no such object."""
    try:
        return storage.get_file_obj(bucket, name)
    except NotFound:
        return None


def _precondition_failed(response) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                             "errors": [{"reason": "conditionNotMet", "message": "Precondition Failed"}]}})


def download_with_generation(request, response, storage, *args, **kwargs):
    stored = _stored(storage, request.params["bucket_name"], request.params["object_id"])
    if stored is not None:
        generation = int(stored["generation"])
        response["x-goog-generation"] = str(generation)
        response["x-goog-metageneration"] = str(stored["metageneration"])
        match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
        if match is not None and int(match) != generation:
            return _precondition_failed(response)
        if not_match is not None and int(not_match) == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
    return _download(request, response, storage, *args, **kwargs)


def insert_if_generation_matches(request, response, storage, *args, **kwargs):
    match = _query(request, "ifGenerationMatch")
    name = _query(request, "name")
    if match is not None and name is not None:
        stored = _stored(storage, request.params["bucket_name"], name)
        if (int(stored["generation"]) if stored else 0) != int(match):
            return _precondition_failed(response)
    return _insert(request, response, storage, *args, **kwargs)


objects.download = download_with_generation  # what objects.get calls for ?alt=media
for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
        if handler is _download:
            handlers[method] = download_with_generation
        elif handler is _insert:
            handlers[method] = insert_if_generation_matches


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


_handling = threading.Lock()
_handle = server.Router.handle


def _handle_one_at_a_time(self, method):
    with _handling:  # the emulator's storage is not thread-safe
        return _handle(self, method)


server.Router.handle = _handle_one_at_a_time
server.server.HTTPServer = _Server

if __name__ == "__main__":
    sys.exit(main())
