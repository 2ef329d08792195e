"""CWM's trained interface: chat rendering, prompts and tool-call parsing.

Pure functions with no I/O; the strings follow docs/protocol.md byte for byte
because the model was trained on exactly these.
"""

from cwm_agent.protocol.chat import (
    STOP_TOKENS,
    ChatTokenizer,
    Message,
    message_token_counter,
    render_ids,
    render_text,
    special_token_id,
    stop_token_ids,
)
from cwm_agent.protocol.parsing import (
    DEFAULT_TOOLS,
    ParsedReply,
    ReplyError,
    ReplyErrorKind,
    ToolCall,
    parse_reply,
)

__all__ = [
    "DEFAULT_TOOLS",
    "STOP_TOKENS",
    "ChatTokenizer",
    "Message",
    "ParsedReply",
    "ReplyError",
    "ReplyErrorKind",
    "ToolCall",
    "message_token_counter",
    "parse_reply",
    "render_ids",
    "render_text",
    "special_token_id",
    "stop_token_ids",
]
