"""The fallback broker's network side: a TLS listener on loopback, one asyncio task per
connection, MQTT 5 packets read and written by the `mqtt5` codec, routing by `Router`.

Every client shows a certificate from the hub's device CA, checked against its CRL, as with
the managed Mosquitto; what this broker lacks is the ACL (any client may use any topic) and
persistence (sessions, queues and retained messages live in memory). `reload()` rereads the
CRL and cuts off connections whose certificate is now revoked, without a restart, so the
in-memory sessions of everyone else survive a revocation.

Left out because no client of the fleet uses them: QoS 2 (CONNACK says the maximum is 1),
will messages, topic aliases, subscription identifiers and AUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import mqtt5
from cryptography import x509

from edge_agent.protocol import MAX_PACKET_BYTES
from hub.broker.fallback.routing import Message, Router, Subscription

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_BYTES = 1 << 16
EXPIRY_SWEEP_S = 60.0


@dataclass(frozen=True)
class TlsSettings:
    ca: Path
    cert: Path
    key: Path
    crl: Path

    def context(self) -> ssl.SSLContext:
        """Client certificates required, from the CA, not on the CRL."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context

    def revoked_serials(self) -> set[int]:
        crl = x509.load_pem_x509_crl(self.crl.read_bytes())
        return {entry.serial_number for entry in crl}


class ProtocolViolation(Exception):
    def __init__(self, reason: mqtt5.DisconnectReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(eq=False)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    serial: int | None
    name: str
    client_id: str | None = None
    keep_alive_s: int = 0
    closing: bool = False
    _buffer: bytearray = field(default_factory=bytearray)

    def write(self, packet: mqtt5.Packet) -> None:
        if not self.closing:
            self.writer.write(packet.write())

    def send_publish(self, packet_id: int | None, message: Message, duplicate: bool) -> None:
        self.write(
            mqtt5.PublishPacket(
                message.topic,
                message.payload,
                qos=mqtt5.QoS(message.qos),
                retain=message.retain,
                packet_id=packet_id,
                duplicate=duplicate,
            )
        )

    def disconnect(self, reason: mqtt5.DisconnectReasonCode) -> None:
        """Tell the client why (MQTT 5 DISCONNECT) and close."""
        self.write(mqtt5.DisconnectPacket(reason_code=reason))
        self.closing = True
        self.writer.close()

    async def packets(self) -> list[mqtt5.Packet]:
        """The next complete packets; [] when the peer closed. TimeoutError past 1.5 x the
        keep-alive (MQTT 5, 3.1.2.10)."""
        while True:
            packets = self._parse()
            if packets:
                return packets
            timeout = 1.5 * self.keep_alive_s if self.keep_alive_s else None
            if self.client_id is None:
                timeout = CONNECT_TIMEOUT_S
            data = await asyncio.wait_for(self.reader.read(READ_BYTES), timeout)
            if not data:
                return []
            self._buffer += data

    def _parse(self) -> list[mqtt5.Packet]:
        packets: list[mqtt5.Packet] = []
        offset = 0
        with memoryview(self._buffer) as view:
            while offset < len(view):
                try:
                    packet, size = mqtt5.read(view[offset:])
                except IndexError:  # an incomplete packet: wait for more bytes
                    if len(view) - offset > MAX_PACKET_BYTES:  # the size counts the header
                        raise ProtocolViolation(
                            mqtt5.DisconnectReasonCode.PACKET_TOO_LARGE,
                            f"a packet over the {MAX_PACKET_BYTES}-byte limit",
                        ) from None
                    break
                except ValueError as error:
                    raise ProtocolViolation(
                        mqtt5.DisconnectReasonCode.MALFORMED_PACKET, str(error)
                    ) from error
                if size > MAX_PACKET_BYTES:
                    raise ProtocolViolation(
                        mqtt5.DisconnectReasonCode.PACKET_TOO_LARGE,
                        f"a packet over the {MAX_PACKET_BYTES}-byte limit ({size} bytes)",
                    )
                offset += size
                packets.append(packet)
        del self._buffer[:offset]
        return packets


class FallbackBroker:
    def __init__(self, host: str, port: int, tls: TlsSettings, *, max_queued: int) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.router = Router(max_queued=max_queued)
        self._server: asyncio.Server | None = None
        self._context = tls.context()
        self._by_client: dict[str, Connection] = {}
        self._connections: set[Connection] = set()
        self._stopped = asyncio.Event()

    async def serve(self) -> None:
        """Listen until stop()."""
        # TLS starts inside each connection's task (not in the server), so a refused
        # certificate is logged with its reason, and a reload swaps the context in place.
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        log.info("fallback broker running on %s:%s", self.host, self.port)
        sweeper = asyncio.create_task(self._sweep_expired())
        try:
            await self._stopped.wait()
        finally:
            sweeper.cancel()
            if self._server is not None:
                self._server.close()
            for connection in list(self._connections):
                connection.writer.close()
            log.info("fallback broker stopped")

    def stop(self) -> None:
        self._stopped.set()

    def reload(self) -> None:
        """Reread the CRL: new connections are checked against it, and open connections
        whose certificate it lists are cut off."""
        self._context = self.tls.context()
        revoked = self.tls.revoked_serials()
        for connection in list(self._connections):
            if connection.serial in revoked:
                log.info("cutting off %s: its certificate is revoked", connection.name)
                connection.disconnect(mqtt5.DisconnectReasonCode.NOT_AUTHORIZED)
        log.info("reloaded the CRL (%d revoked certificates)", len(revoked))

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            gone = self.router.expire(time.monotonic())
            if gone:
                log.info("%d expired sessions removed", gone)

    # --- one connection ------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        try:
            await writer.start_tls(self._context, ssl_handshake_timeout=CONNECT_TIMEOUT_S)
        except (ssl.SSLError, ConnectionError, TimeoutError) as error:
            log.info("refused a connection from %s:%s: %s", *address[:2], error)
            writer.close()
            return
        serial, name = _peer(writer)
        connection = Connection(reader, writer, serial, name)
        self._connections.add(connection)
        try:
            await self._converse(connection)
        except ProtocolViolation as violation:
            log.warning("disconnecting %s: %s", connection.name, violation)
            connection.disconnect(violation.reason)
        except TimeoutError:
            log.info("%s sent nothing within its keep-alive: disconnected", connection.name)
            connection.disconnect(mqtt5.DisconnectReasonCode.KEEP_ALIVE_TIMEOUT)
        except (ConnectionError, ssl.SSLError) as error:
            log.info("%s: connection lost (%s)", connection.name, error)
        finally:
            self._connections.discard(connection)
            self._forget(connection)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _converse(self, connection: Connection) -> None:
        while packets := await connection.packets():
            for packet in packets:
                if connection.closing:
                    return
                self._dispatch(connection, packet)
            if connection.closing:
                return
            await connection.writer.drain()

    def _forget(self, connection: Connection) -> None:
        client_id = connection.client_id
        if client_id is not None and self._by_client.get(client_id) is connection:
            del self._by_client[client_id]
            self.router.close_session(client_id)
            log.info("client %s (%s) disconnected", client_id, connection.name)

    def _dispatch(self, connection: Connection, packet: mqtt5.Packet) -> None:
        if connection.client_id is None:
            if not isinstance(packet, mqtt5.ConnectPacket):
                raise ProtocolViolation(
                    mqtt5.DisconnectReasonCode.PROTOCOL_ERROR, "the first packet is not CONNECT"
                )
            self._connect(connection, packet)
            return
        match packet:
            case mqtt5.PublishPacket():
                self._publish(connection, packet)
            case mqtt5.PubAckPacket():
                self.router.sessions[connection.client_id].acknowledged(packet.packet_id)
            case mqtt5.SubscribePacket():
                self._subscribe(connection, packet)
            case mqtt5.UnsubscribePacket():
                codes = [
                    mqtt5.UnsubAckReasonCode.SUCCESS
                    if self.router.unsubscribe(connection.client_id, pattern)
                    else mqtt5.UnsubAckReasonCode.NO_SUBSCRIPTION_EXISTED
                    for pattern in packet.patterns
                ]
                connection.write(mqtt5.UnsubAckPacket(packet.packet_id, codes))
            case mqtt5.PingReqPacket():
                connection.write(mqtt5.PingRespPacket())
            case mqtt5.DisconnectPacket():
                session = self.router.sessions.get(connection.client_id)
                if session is not None and packet.session_expiry_interval is not None:
                    session.expiry_s = packet.session_expiry_interval
                connection.closing = True
                connection.writer.close()
            case _:
                raise ProtocolViolation(
                    mqtt5.DisconnectReasonCode.PROTOCOL_ERROR,
                    f"{type(packet).__name__} is not supported (QoS 2 and AUTH are off)",
                )

    def _connect(self, connection: Connection, packet: mqtt5.ConnectPacket) -> None:
        client_id = packet.client_id or f"auto-{id(connection):x}"
        previous = self._by_client.pop(client_id, None)
        if previous is not None:
            log.info("client %s connected again: the older connection is closed", client_id)
            previous.client_id = None
            previous.disconnect(mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER)
            self.router.close_session(client_id)
        present = self.router.open_session(
            client_id, clean_start=packet.clean_start, expiry_s=packet.session_expiry_interval
        )
        connection.client_id = client_id
        connection.keep_alive_s = packet.keep_alive
        self._by_client[client_id] = connection
        connection.write(
            mqtt5.ConnAckPacket(
                session_present=present,
                assigned_client_id=None if packet.client_id else client_id,
                max_qos=mqtt5.QoS.AT_LEAST_ONCE,
                max_packet_size=MAX_PACKET_BYTES,
                subscription_id_available=False,
                topic_alias_max=0,
            )
        )
        log.info(
            "client %s connected (%s, session %s)",
            client_id,
            connection.name,
            "resumed" if present else "new",
        )
        self.router.sessions[client_id].attach(connection.send_publish, packet.receive_max)

    def _publish(self, connection: Connection, packet: mqtt5.PublishPacket) -> None:
        if packet.qos == mqtt5.QoS.EXACTLY_ONCE:
            raise ProtocolViolation(
                mqtt5.DisconnectReasonCode.QOS_NOT_SUPPORTED, "QoS 2 publish (maximum is 1)"
            )
        if packet.topic_alias is not None:
            raise ProtocolViolation(
                mqtt5.DisconnectReasonCode.TOPIC_ALIAS_INVALID, "topic aliases are off"
            )
        message = Message(packet.topic, packet.payload, int(packet.qos), packet.retain)
        delivered = self.router.publish(message, connection.client_id)
        if packet.qos == mqtt5.QoS.AT_LEAST_ONCE:
            assert packet.packet_id is not None
            code = (
                mqtt5.PubAckReasonCode.SUCCESS
                if delivered
                else mqtt5.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS
            )
            connection.write(mqtt5.PubAckPacket(packet.packet_id, reason_code=code))

    def _subscribe(self, connection: Connection, packet: mqtt5.SubscribePacket) -> None:
        assert connection.client_id is not None
        session = self.router.sessions[connection.client_id]
        codes: list[mqtt5.SubAckReasonCode] = []
        retained: list[Message] = []
        for topic_filter in packet.topic_filters:
            qos = min(int(topic_filter.max_qos), 1)
            try:
                subscription = Subscription.parse(
                    topic_filter.pattern,
                    qos,
                    no_local=topic_filter.no_local,
                    retain_as_published=topic_filter.retain_as_published,
                )
            except ValueError as error:
                log.warning("%s: %s", connection.client_id, error)
                codes.append(mqtt5.SubAckReasonCode.TOPIC_FILTER_INVALID)
                continue
            existed = subscription.pattern in session.subscriptions
            messages = self.router.subscribe(connection.client_id, subscription)
            handling = topic_filter.retain_handling
            if handling == mqtt5.RetainHandling.SEND_ALWAYS or (
                handling == mqtt5.RetainHandling.SEND_IF_SUBSCRIPTION_NOT_EXISTS and not existed
            ):
                retained.extend(messages)
            codes.append(mqtt5.SubAckReasonCode(qos))
        connection.write(mqtt5.SubAckPacket(packet.packet_id, codes))
        for message in retained:
            session.deliver(message)


def _peer(writer: asyncio.StreamWriter) -> tuple[int | None, str]:
    """The client certificate's serial and a name for logs (its CN and address)."""
    address = writer.get_extra_info("peername")
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None:
        return None, str(address)
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else "?"
    return cert.serial_number, f"{common_name}@{address[0]}:{address[1]}"
