-- ContextCache gateway: gRPC-Web request bodies checked before Envoy's grpc_web filter.
--
-- Why: a body whose last frame header announces more bytes than follow (or that ends inside
-- a frame header, or carries no frame at all) reaches the Python gRPC server as a call whose
-- message never completes, and the server never answers it: the caller waited for the
-- route's timeout. And grpc-web-text that is not base64 is answered by the grpc_web filter
-- itself with grpc-status INTERNAL, which says the server broke. Both are the caller's
-- mistake: answered here with INVALID_ARGUMENT, naming what is wrong, before any upstream.
--
-- Only bodies that announce their size (content-length) and fit the stream's buffer limit
-- (MAX_CHECKED, the listener's per_connection_buffer_limit_bytes) are held whole and
-- checked; larger or chunked bodies (browser uploads of big files to IngestDocument) stream
-- through unchecked, as before (a truncated one still waits for the route's timeout). Any
-- other content type is not touched.

local MAX_CHECKED = 1048576
local INVALID_ARGUMENT = "3"
local BINARY_REPLY = "application/grpc-web+proto"
local TEXT_REPLY = "application/grpc-web-text+proto"
local NOT_BASE64 = "grpc-web-text body is not base64"
local ENVOY_BAD_BASE64 = "Bad gRPC-web request, invalid base64 data."

-- base64 alphabet value of each byte; '=' (padding) maps to -1.
local SEXTET = {}
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
for i = 1, #ALPHABET do
  SEXTET[ALPHABET:byte(i)] = i - 1
end
SEXTET[("="):byte()] = -1

-- `bytes` as base64 (a reply to a grpc-web-text caller that accepts only text).
local function encode_base64(bytes)
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local s1, s2 = math.floor(n / 262144) % 64, math.floor(n / 4096) % 64
    local s3, s4 = math.floor(n / 64) % 64, n % 64
    out[#out + 1] = ALPHABET:sub(s1 + 1, s1 + 1) .. ALPHABET:sub(s2 + 1, s2 + 1)
      .. (b and ALPHABET:sub(s3 + 1, s3 + 1) or "=") .. (c and ALPHABET:sub(s4 + 1, s4 + 1) or "=")
  end
  return table.concat(out)
end

-- Byte `k` (from 0) of a binary body.
local function binary_reader(body)
  return #body, function(k)
    return body:byte(k + 1)
  end
end

-- The size of what grpc-web-text decodes to and a reader of its byte `k` (from 0; -1 when
-- its group of four is not base64), or nil when it is plainly not base64 as the grpc_web
-- filter decodes it: groups of four characters, padding ('=') only at the very end. Only
-- frame headers are decoded here (a 1 MiB body scanned in Lua took ~0.2 s); the grpc_web
-- filter decodes the rest and answers a bad character there (see envoy_on_response).
local function base64_reader(text)
  if #text % 4 ~= 0 then
    return nil
  end
  local pad = text:find("=", 1, true)
  if pad ~= nil and (pad < #text - 1 or text:find("[^=]", pad)) then
    return nil
  end
  local size = #text / 4 * 3 - (pad and #text - pad + 1 or 0)
  return size, function(k)
    local group = math.floor(k / 3) * 4
    local a, b, c, d = text:byte(group + 1, group + 4)
    a, b, c, d = SEXTET[a], SEXTET[b], SEXTET[c], SEXTET[d]
    if a == nil or b == nil or c == nil or d == nil then
      return -1
    end
    local n = a * 262144 + b * 4096 + math.max(c, 0) * 64 + math.max(d, 0)
    return math.floor(n / 256 ^ (2 - k % 3)) % 256
  end
end

-- Why the frames of a gRPC-Web body do not add up, or nil when they do: each frame is a
-- flag byte, a 4-byte big-endian length, then exactly that many bytes. A length that is
-- not base64 says so.
local function frame_problem(size, byte_at)
  if size == 0 then
    return "malformed gRPC-Web body: empty, a request carries at least one frame"
  end
  local at = 0
  while at < size do
    local left = size - at
    if left < 5 then
      return string.format("malformed gRPC-Web frame: header cut short (%d of 5 bytes)", left)
    end
    local b1, b2, b3, b4 = byte_at(at + 1), byte_at(at + 2), byte_at(at + 3), byte_at(at + 4)
    if math.min(b1, b2, b3, b4) < 0 then
      return NOT_BASE64
    end
    local announced = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    if announced > left - 5 then
      return string.format(
        "malformed gRPC-Web frame: header announces %d bytes, %d follow", announced, left - 5)
    end
    at = at + 5 + announced
  end
  return nil
end

-- A gRPC-Web frame of four big-endian bytes' length.
local function frame(flag, payload)
  local n = #payload
  return string.char(flag, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. payload
end

-- INVALID_ARGUMENT with `message`: in the headers (as Envoy's own gRPC-Web replies, and for
-- the access log) and again in a trailer frame, because Envoy drops the content-type of a
-- local reply without a body, and gRPC-Web clients (connect-web) refuse a reply without one.
local function refuse(handle, content_type, message)
  local trailers = "grpc-status:" .. INVALID_ARGUMENT .. "\r\ngrpc-message:" .. message .. "\r\n"
  local body = frame(128, trailers)
  if content_type == TEXT_REPLY then
    body = encode_base64(body)
  end
  handle:respond({
    [":status"] = "200",
    ["content-type"] = content_type,
    ["grpc-status"] = INVALID_ARGUMENT,
    ["grpc-message"] = message,
  }, body)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = string.lower(headers:get("content-type") or "")
  if content_type:find("application/grpc-web", 1, true) ~= 1 then
    return
  end
  local length = tonumber(headers:get("content-length") or "")
  if length == nil or length > MAX_CHECKED then
    return
  end
  local is_text = content_type:find("application/grpc-web-text", 1, true) == 1
  -- Text only to a caller that asks for it, as Envoy's grpc_web filter answers.
  local accept = string.lower(headers:get("accept") or "")
  local reply_type = BINARY_REPLY
  if accept:find("application/grpc-web-text", 1, true) == 1 then
    reply_type = TEXT_REPLY
  end
  local body = ""
  local buffer = length > 0 and handle:body() or nil
  if buffer ~= nil then
    body = buffer:getBytes(0, buffer:length())
  end
  local size, byte_at
  if is_text then
    size, byte_at = base64_reader(body)
    if size == nil then
      refuse(handle, reply_type, NOT_BASE64)
      return
    end
  else
    size, byte_at = binary_reader(body)
  end
  local problem = frame_problem(size, byte_at)
  if problem ~= nil then
    refuse(handle, reply_type, problem)
  end
end

-- The grpc_web filter's own answer to grpc-web-text that is not base64 (a bad character
-- past the frame headers, or a body not checked above: chunked or over MAX_CHECKED) says
-- INTERNAL: made INVALID_ARGUMENT, the same answer as above.
function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get("grpc-status") == "13" and headers:get("grpc-message") == ENVOY_BAD_BASE64 then
    headers:replace(":status", "200")
    headers:replace("grpc-status", INVALID_ARGUMENT)
    headers:replace("grpc-message", NOT_BASE64)
  end
end
