"""
The component stream's parser: expat building the same domish trees as
Twisted's ``ExpatElementStream``, with less work per stanza.

Twisted's builder calls ``Element.__init__`` for every element (its default
namespace worked out again from the prefixes), splits every attribute name,
and adds character data piece by piece, concatenating the text so far each
time: expat reports text in pieces (at every line end, entity and read), so a
hostile peer's stanza of many short lines cost time quadratic in its size.
Here expat buffers text itself (``buffer_text``), the pieces that still come
apart are joined once, when the next tag begins or ends, and an element is
built with its fields set directly. Namespace declarations are handled as in
Twisted (they are rare inside stanzas: the stream header declares them once).

What the rest of the stack sees is unchanged: the same events
(``DocumentStartEvent``, ``ElementEvent``, ``DocumentEndEvent``), the same
trees (tests/unit/test_parser.py compares them on random and hostile documents
split at every byte), the same ``ParserError`` for malformed XML, and the same
bounds: at most ``maxStanzaSize`` bytes and ``maxElementCount`` elements per
stanza, counted as the bytes arrive, and at most ``maxDepth`` levels of
nesting, so a peer cannot make the parser or a handler's recursion go
arbitrarily deep.
"""

from __future__ import annotations

import pyexpat
from typing import Callable

from twisted.words.xish import domish
from twisted.words.xish.domish import Element, ParserError

_new_element = Element.__new__


class LeanElementStream:
    """A drop-in for ``domish.ExpatElementStream`` (see the module's docstring for what differs inside)."""

    maxStanzaSize = domish.ExpatElementStream.maxStanzaSize
    maxElementCount = domish.ExpatElementStream.maxElementCount
    #: Levels below the stream's root element; XMPP stanzas use a handful
    #: (a MAM result with a forwarded message and its payload: about eight).
    maxDepth = 100

    def __init__(self) -> None:
        self.DocumentStartEvent: Callable | None = None
        self.ElementEvent: Callable | None = None
        self.DocumentEndEvent: Callable | None = None
        self.error = pyexpat.error
        self.parser = parser = pyexpat.ParserCreate("UTF-8", " ")
        parser.buffer_text = True
        parser.StartElementHandler = self._onStartElement
        parser.EndElementHandler = self._onEndElement
        parser.CharacterDataHandler = self._onCdata
        parser.StartNamespaceDeclHandler = self._onStartNamespace
        parser.EndNamespaceDeclHandler = self._onEndNamespace
        self.currElem: Element | None = None
        self.defaultNsStack = [""]
        self.documentStarted = 0
        self.localPrefixes: dict[str, str] = {}
        self.elementCount = 0
        self.stanzaSize = 0
        self.depth = 0
        #: Text of the current element not yet added to it.
        self._text: list[str] = []

    def parse(self, buffer: bytes) -> None:
        self.stanzaSize += len(buffer)
        try:
            self.parser.Parse(buffer)
        except self.error as e:
            raise ParserError(str(e))
        if self.stanzaSize > self.maxStanzaSize:
            raise ParserError("Maximum stanza size exceeded")

    def _flush_text(self) -> None:
        text = self._text
        data = text[0] if len(text) == 1 else "".join(text)
        text.clear()
        children = self.currElem.children
        if children and type(children[-1]) is str:
            children[-1] += data
        else:
            children.append(data)

    def _onStartElement(self, name: str, attrs: dict) -> None:
        uri, _, local = name.rpartition(" ")
        for key in attrs:
            if " " in key:
                _namespaced_attributes(attrs)
                break
        e = _new_element(Element)
        e.localPrefixes = self.localPrefixes
        e.uri = uri
        e.name = local
        default = self.defaultNsStack[-1]
        if default is None and uri not in e.localPrefixes.values():
            default = uri               # as Element.__init__ does when the default namespace was undeclared
        e.defaultUri = default
        e.attributes = attrs
        e.children = []
        e.parent = None
        self.localPrefixes = {}
        if self.documentStarted == 1:
            self.elementCount += 1
            if self.elementCount > self.maxElementCount:
                raise ParserError("Maximum element count exceeded")
            parent = self.currElem
            if parent is not None:
                if self._text:
                    self._flush_text()
                self.depth += 1
                if self.depth > self.maxDepth:
                    raise ParserError("Maximum element depth exceeded")
                parent.children.append(e)
                e.parent = parent
            self.currElem = e
        else:
            self.documentStarted = 1
            self.DocumentStartEvent(e)

    def _onEndElement(self, _name: str) -> None:
        current = self.currElem
        if current is None:
            self.DocumentEndEvent()
            return
        if self._text:
            self._flush_text()
        parent = current.parent
        if parent is None:
            self.ElementEvent(current)
            self.currElem = None
            self.elementCount = 0
            self.stanzaSize = 0
        else:
            self.depth -= 1
            self.currElem = parent

    def _onCdata(self, data: str) -> None:
        if self.currElem is not None:
            self._text.append(data)

    def _onStartNamespace(self, prefix: str | None, uri: str) -> None:
        if prefix is None:
            self.defaultNsStack.append(uri)
        else:
            self.localPrefixes[prefix] = uri

    def _onEndNamespace(self, prefix: str | None) -> None:
        if prefix is None:
            self.defaultNsStack.pop()


def _namespaced_attributes(attrs: dict) -> None:
    """Attribute names expat gave as ``uri name`` become ``(uri, name)`` keys, in Twisted's order (moved last)."""
    moved = {}
    for key in [k for k in attrs if " " in k]:
        uri, name = key.rsplit(" ", 1)
        moved[(uri, name)] = attrs.pop(key)
    attrs.update(moved)


def element_stream() -> LeanElementStream:
    return LeanElementStream()
