"""The close codes of the live server's WebSocket connections.

The 44xx codes are graphql-transport-ws's; the legacy graphql-ws protocol uses the same ones.
The others are RFC 6455's.
"""

BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
SUBPROTOCOL_NOT_ACCEPTABLE = 4406
INIT_TIMEOUT = 4408
DUPLICATE_ID = 4409
TOO_MANY_INITS = 4429
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
