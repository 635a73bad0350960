"""Remote OpenAI-compatible endpoints: another LM Station, a cluster, vLLM or LMDeploy servers, any
provider. Which ones the user saved (EndpointStore, their keys kept like the hub tokens), what each
serves (list_models) and a streamed chat with one of its models (stream_chat).

No Qt and no torch: the window runs these calls on worker threads, and a script or the CLI can use
them as they are.
"""

from app.remote.client import RemoteError, RemoteReply, list_models, openai_messages, openai_sampling, stream_chat
from app.remote.endpoints import Endpoint, EndpointStore, check_url, new_endpoint_id

__all__ = ["Endpoint", "EndpointStore", "RemoteError", "RemoteReply", "check_url", "list_models", "new_endpoint_id",
           "openai_messages", "openai_sampling", "stream_chat"]
