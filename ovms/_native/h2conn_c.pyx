# cython: language_level=3, boundscheck=False, wraparound=False
"""The server side of one HTTP/2 connection on libnghttp2, with no I/O: bytes in, events out, bytes to write.

The compiled twin of ``h2conn_py`` (same interface; see its docstring). libnghttp2 is the HTTP/2 library curl and
Apache use: framing, HPACK, flow control and the protocol's checks run in C. It is linked as the shared library
Debian and Ubuntu install with libcurl (``libnghttp2.so.14``); its development headers are not needed, because the
few declarations used are written below (its ABI has been stable since 1.0).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy


cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <sys/types.h>
    /* Declarations of libnghttp2 1.x (ABI-stable), written here so its -dev headers are not needed to build. */
    typedef struct nghttp2_session nghttp2_session;
    typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
    typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
    typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags; uint8_t reserved; }
        nghttp2_frame_hd;
    typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
    typedef struct { nghttp2_frame_hd hd; int32_t last_stream_id; uint32_t error_code; uint8_t *opaque_data;
                     size_t opaque_data_len; uint8_t reserved; } nghttp2_goaway;
    /* Only the members read here; every member of the real union starts with the frame header. */
    typedef union { nghttp2_frame_hd hd; nghttp2_rst_stream rst_stream; nghttp2_goaway goaway; } nghttp2_frame;
    typedef union { int fd; void *ptr; } nghttp2_data_source;
    typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, uint8_t *, size_t,
                                                          uint32_t *, nghttp2_data_source *, void *);
    typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
        nghttp2_data_provider;
    typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
    typedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *, const nghttp2_frame *, void *);
    typedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                              const uint8_t *, size_t, uint8_t, void *);
    typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *);
    typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t, const uint8_t *,
                                                       size_t, void *);
    typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *);
    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **);
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *);
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                                 nghttp2_on_begin_headers_callback);
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback);
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
                                                              nghttp2_on_frame_recv_callback);
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                                   nghttp2_on_data_chunk_recv_callback);
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                                nghttp2_on_stream_close_callback);
    int nghttp2_session_server_new(nghttp2_session **, const nghttp2_session_callbacks *, void *);
    void nghttp2_session_del(nghttp2_session *);
    ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t);
    ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **);
    int nghttp2_session_want_read(nghttp2_session *);
    int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
    int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t);
    int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t,
                                const nghttp2_data_provider *);
    int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t);
    int nghttp2_session_resume_data(nghttp2_session *, int32_t);
    int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t);
    int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t);
    int nghttp2_session_terminate_session(nghttp2_session *, uint32_t);
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *);
    const char *nghttp2_strerror(int);
    """
    ctypedef long ssize_t
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code
    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_rst_stream rst_stream
        nghttp2_goaway goaway
    ctypedef union nghttp2_data_source:
        int fd
        void *ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, uint8_t *, size_t,
                                                          uint32_t *, nghttp2_data_source *, void *) noexcept
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value
    ctypedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                               const uint8_t *, size_t, uint8_t, void *) noexcept
    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t, const uint8_t *,
                                                        size_t, void *) noexcept
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *) noexcept
    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                                 nghttp2_on_begin_headers_callback)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
                                                              nghttp2_on_frame_recv_callback)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                                   nghttp2_on_data_chunk_recv_callback)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                                nghttp2_on_stream_close_callback)
    int nghttp2_session_server_new(nghttp2_session **, const nghttp2_session_callbacks *, void *)
    void nghttp2_session_del(nghttp2_session *)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t)
    ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **)
    int nghttp2_session_want_read(nghttp2_session *)
    int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t)
    int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t)
    int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t,
                                const nghttp2_data_provider *)
    int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t)
    int nghttp2_session_resume_data(nghttp2_session *, int32_t)
    int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t)
    int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t)
    int nghttp2_session_terminate_session(nghttp2_session *, uint32_t)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *)
    const char *nghttp2_strerror(int)

EV_HEADERS = 1
EV_DATA = 2
EV_END = 3
EV_RESET = 4
EV_GOAWAY = 5

cdef enum:  # constants of nghttp2.h
    T_DATA = 0
    T_HEADERS = 1
    T_RST_STREAM = 3
    T_GOAWAY = 7
    FLAG_END_STREAM = 1
    DATA_FLAG_EOF = 1
    DATA_FLAG_NO_END_STREAM = 2
    ERR_DEFERRED = -508
    ERR_CALLBACK_FAILURE = -902
    PROTOCOL_ERROR = 1
    SETTINGS_MAX_CONCURRENT_STREAMS = 3
    SETTINGS_INITIAL_WINDOW_SIZE = 4
    SETTINGS_MAX_HEADER_LIST_SIZE = 6


class ProtocolError(Exception):
    """The peer broke HTTP/2 (preface, framing, HPACK, flow control): ``data_to_send()`` holds the GOAWAY."""


cdef class _Outgoing:
    """A response stream's data not yet framed (beyond the peer's window), and its trailers once given."""
    cdef list chunks
    cdef Py_ssize_t offset  # into chunks[0]
    cdef object trailers  # list of (name, value), or None
    cdef bint ended  # send_data(end_stream=True): no trailers, END_STREAM on the last DATA

    def __cinit__(self):
        self.chunks = []
        self.offset = 0
        self.trailers = None
        self.ended = False


cdef class _NV:
    """A C array of name/value pairs pointing into the bytes it keeps alive, for one submit call."""
    cdef nghttp2_nv *nva
    cdef size_t n
    cdef list keep

    def __cinit__(self, headers):
        self.keep = []
        self.n = len(headers)
        self.nva = <nghttp2_nv *> malloc(max(self.n, 1) * sizeof(nghttp2_nv))
        if self.nva == NULL:
            raise MemoryError()
        cdef size_t i = 0
        cdef bytes name, value
        for pair in headers:
            name = bytes(pair[0])
            value = bytes(pair[1])
            self.keep.append(name)
            self.keep.append(value)
            self.nva[i].name = <uint8_t *> PyBytes_AS_STRING(name)
            self.nva[i].namelen = PyBytes_GET_SIZE(name)
            self.nva[i].value = <uint8_t *> PyBytes_AS_STRING(value)
            self.nva[i].valuelen = PyBytes_GET_SIZE(value)
            self.nva[i].flags = 0
            i += 1

    def __dealloc__(self):
        free(self.nva)


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept with gil:
    cdef ServerConnection conn = <ServerConnection> user_data
    try:
        if frame.hd.type == T_HEADERS and frame.hd.stream_id not in conn._requests:
            conn._requests[frame.hd.stream_id] = []
            conn._receiving = frame.hd.stream_id
        else:
            conn._receiving = 0  # trailers from the client: not reported
        return 0
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept with gil:
    cdef ServerConnection conn = <ServerConnection> user_data
    try:
        if conn._receiving == frame.hd.stream_id:
            conn._requests[frame.hd.stream_id].append((PyBytes_FromStringAndSize(<char *> name, namelen),
                                                       PyBytes_FromStringAndSize(<char *> value, valuelen)))
        return 0
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept with gil:
    cdef ServerConnection conn = <ServerConnection> user_data
    cdef int32_t stream_id = frame.hd.stream_id
    try:
        if frame.hd.type == T_HEADERS:
            if conn._receiving == stream_id:
                conn._events.append((EV_HEADERS, stream_id, conn._requests[stream_id]))
                conn._requests[stream_id] = None  # seen: later HEADERS are trailers
                conn._receiving = 0
            if frame.hd.flags & FLAG_END_STREAM:
                conn._events.append((EV_END, stream_id))
        elif frame.hd.type == T_DATA:
            if frame.hd.flags & FLAG_END_STREAM:
                conn._events.append((EV_END, stream_id))
        elif frame.hd.type == T_RST_STREAM:
            conn._events.append((EV_RESET, stream_id, frame.rst_stream.error_code))
        elif frame.hd.type == T_GOAWAY:
            conn._goaway = True
            conn._events.append((EV_GOAWAY, 0, frame.goaway.error_code))
        return 0
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef int _on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t length,
                        void *user_data) noexcept with gil:
    cdef ServerConnection conn = <ServerConnection> user_data
    cdef list events = conn._events
    try:
        if length:
            last = events[len(events) - 1] if events else None
            if conn._data_stream == stream_id and last is not None and last[0] == EV_DATA:
                # The frames of one stream read in one go make one event (a 600 KB message is 37 frames)
                _append(<bytearray> last[2], data, length)
            else:
                chunk = bytearray()
                _append(chunk, data, length)
                events.append((EV_DATA, stream_id, chunk))
                conn._data_stream = stream_id
        return 0
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef inline void _append(bytearray target, const uint8_t *data, size_t length) except *:
    cdef Py_ssize_t size = len(target)
    PyByteArray_Resize(target, size + length)
    memcpy(PyByteArray_AS_STRING(target) + size, data, length)


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept with gil:
    cdef ServerConnection conn = <ServerConnection> user_data
    try:
        conn._requests.pop(stream_id, None)
        conn._outgoing.pop(stream_id, None)
        return 0
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef ssize_t _read_data(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept with gil:
    """Fill one DATA frame from the stream's queue; defer while it is empty and not ended."""
    cdef ServerConnection conn = <ServerConnection> user_data
    cdef _Outgoing out
    cdef size_t written = 0, take
    cdef Py_buffer view
    cdef _NV nv
    try:
        out = conn._outgoing.get(stream_id)
        if out is None:
            return ERR_DEFERRED
        while written < length and out.chunks:
            chunk = out.chunks[0]
            PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
            try:
                take = min(<size_t> (view.len - out.offset), length - written)
                memcpy(buf + written, (<char *> view.buf) + out.offset, take)
                written += take
                out.offset += take
                done = out.offset >= view.len
            finally:
                PyBuffer_Release(&view)
            if done:
                out.chunks.pop(0)
                out.offset = 0
        if not out.chunks:
            if out.ended:
                data_flags[0] |= DATA_FLAG_EOF
            elif out.trailers is not None:
                data_flags[0] |= DATA_FLAG_EOF | DATA_FLAG_NO_END_STREAM
                nv = _NV(out.trailers)
                nghttp2_submit_trailer(session, stream_id, nv.nva, nv.n)
            elif written == 0:
                return ERR_DEFERRED
        return written
    except BaseException:
        return ERR_CALLBACK_FAILURE


cdef class ServerConnection:
    """HTTP/2 server connection state (see ``h2conn_py.ServerConnection`` for the interface)."""
    cdef nghttp2_session *session
    cdef list _events
    cdef dict _requests  # stream id -> header list while its request HEADERS arrive, then None
    cdef dict _outgoing  # stream id -> _Outgoing of a response with a body in progress
    cdef int32_t _receiving
    cdef int32_t _data_stream  # the stream of the last EV_DATA event of this receive
    cdef bint _goaway

    def __cinit__(self, int max_concurrent_streams=256, int initial_window=1 << 24, int max_header_list=65536):
        cdef nghttp2_session_callbacks *callbacks
        cdef nghttp2_settings_entry settings[3]
        self.session = NULL
        self._events = []
        self._requests = {}
        self._outgoing = {}
        self._receiving = 0
        self._goaway = False
        if nghttp2_session_callbacks_new(&callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, _on_stream_close)
        rv = nghttp2_session_server_new(&self.session, callbacks, <void *> self)
        nghttp2_session_callbacks_del(callbacks)
        if rv != 0:
            raise MemoryError(nghttp2_strerror(rv).decode())
        settings[0].settings_id = SETTINGS_MAX_CONCURRENT_STREAMS
        settings[0].value = max_concurrent_streams
        settings[1].settings_id = SETTINGS_INITIAL_WINDOW_SIZE
        settings[1].value = initial_window
        settings[2].settings_id = SETTINGS_MAX_HEADER_LIST_SIZE
        settings[2].value = max_header_list
        nghttp2_submit_settings(self.session, 0, settings, 3)
        nghttp2_session_set_local_window_size(self.session, 0, 0, initial_window)

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)

    def receive(self, data):
        cdef const unsigned char[:] view = data
        cdef ssize_t rv
        self._events = []
        self._data_stream = 0
        if view.shape[0]:
            rv = nghttp2_session_mem_recv(self.session, &view[0], view.shape[0])
            if rv < 0:
                nghttp2_session_terminate_session(self.session, PROTOCOL_ERROR)
                raise ProtocolError(nghttp2_strerror(<int> rv).decode())
        if not nghttp2_session_want_read(self.session) and not self._goaway:
            raise ProtocolError("the peer broke the HTTP/2 protocol; the connection is closed with GOAWAY")
        events, self._events = self._events, []
        return events

    def data_to_send(self):
        cdef const uint8_t *chunk
        cdef ssize_t n
        cdef Py_ssize_t size = 0
        out = bytearray()
        while True:
            n = nghttp2_session_mem_send(self.session, &chunk)
            if n < 0:
                raise ProtocolError(nghttp2_strerror(<int> n).decode())
            if n == 0:
                break
            PyByteArray_Resize(out, size + n)  # grows in place (amortized); no bytes object per chunk
            memcpy(PyByteArray_AS_STRING(out) + size, chunk, n)
            size += n
        return out  # a bytearray: the transport writes it as it is, with no copy to bytes

    def send_headers(self, int32_t stream_id, headers, bint end_stream=False):
        cdef _NV nv = _NV(headers)
        cdef nghttp2_data_provider provider
        if stream_id not in self._requests:
            return  # closed or reset
        if end_stream:
            nghttp2_submit_response(self.session, stream_id, nv.nva, nv.n, NULL)
            return
        self._outgoing[stream_id] = _Outgoing()
        provider.source.ptr = NULL
        provider.read_callback = _read_data
        nghttp2_submit_response(self.session, stream_id, nv.nva, nv.n, &provider)

    def send_data(self, int32_t stream_id, data, bint end_stream=False):
        cdef _Outgoing out = self._outgoing.get(stream_id)
        if out is None:
            return
        if len(data):
            out.chunks.append(data)
        out.ended = end_stream
        nghttp2_session_resume_data(self.session, stream_id)

    def send_trailers(self, int32_t stream_id, headers):
        cdef _Outgoing out = self._outgoing.get(stream_id)
        if out is None:
            return
        out.trailers = list(headers)
        nghttp2_session_resume_data(self.session, stream_id)

    def reset_stream(self, int32_t stream_id, uint32_t error_code=8):
        if stream_id not in self._requests:
            return
        self._outgoing.pop(stream_id, None)
        nghttp2_submit_rst_stream(self.session, 0, stream_id, error_code)

    def close(self, uint32_t error_code=0):
        nghttp2_submit_goaway(self.session, 0, nghttp2_session_get_last_proc_stream_id(self.session), error_code,
                              NULL, 0)
