"""
One dispatch per stanza kind instead of every XPath observer against every stanza.

Twisted's ``EventDispatcher.dispatch`` matches each stanza against every XPath
query registered on the stream: with the gateway's twenty-odd observers (every
handler of gateway/xmpp/, wokkel's disco and IQ response tracking, the stream
error watch) a chat message ran fifteen XPath matches, most of them IQ queries
that could never match a message: about a tenth of the hot path's CPU.

``StanzaRouter`` keeps the observer interface and its semantics exactly —
handlers still call ``addObserver`` with their XPath (and wokkel's do too), in
priority order, higher first, in registration order within a priority;
one-time observers fire once; observers added or removed during a dispatch take
effect after it; each matching observer is called whatever another did with
the stanza (the ``handled`` flag is the handlers' own convention, as before) —
but keeps, per element name, the observers whose query can match an element of
that name: a query rooted at ``/message`` is only tried against messages, one
rooted at ``/iq`` only against IQs. Queries that could match any element
(``//x``, ``/*``) are tried against all of them. A query with nothing to check
beyond the element's name (``/message``, ``/presence``, ``/iq``) is not run
at all. The index is built lazily and thrown away whenever the observers
change; a stream's observers change at connect and authentication, not per
stanza.
"""

from __future__ import annotations

from twisted.python import log
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish, utility, xpath

from gateway.xmpp.parser import element_stream


def already_handled(stanza) -> bool:
    """
    Whether another handler took this stanza (set ``stanza.handled = True``).

    Read from the instance itself, never as ``getattr(stanza, "handled")``: domish
    answers a missing attribute with the first child element of that name, so a
    peer's ``<handled/>`` child made a message, a room line or a presence look taken
    and it was dropped without an answer (tests/hostile/test_xmpp.py).
    """
    return bool(stanza.__dict__.get("handled", False))


def _root_name(query: xpath.XPathQuery) -> str | None:
    """The element name a query's root step demands, or None if it can match any element."""
    base = getattr(query, "baseLocation", None)
    if type(base) is xpath._Location and base.elementName not in (None, "*"):
        return base.elementName
    return None


def _plain_methods(callbacks: utility.CallbackList) -> tuple | None:
    """
    The observers of a CallbackList when calling them directly is what its
    ``callback`` does (none is one-time, none has arguments of its own): in its
    order, without a wrapper and two dict copies per observer. None otherwise.
    """
    methods = []
    for wrapper, onetime in callbacks.callbacks.values():
        if onetime or type(wrapper) is not utility._MethodWrapper or wrapper.args or wrapper.kwargs:
            return None
        methods.append(wrapper.method)
    return tuple(methods)


def _value_source(value, var: str) -> str | None:
    """
    A predicate's value as a Python expression on the element ``e``, computing what
    its ``value(e)`` does (``e`` named ``var``); None for the kinds not translated (indices, functions).
    """
    kind = type(value)
    if kind is xpath.LiteralValue:
        return repr(str(value))
    if kind is xpath.AttribValue:
        if value.attribname == "xmlns":
            return f"{var}.uri"
        return f"{var}.attributes.get({value.attribname!r})"
    if kind is xpath.CompareValue or kind is xpath.BooleanValue:
        op = _OPERATORS.get(value.value.__func__)
        lhs, rhs = _value_source(value.lhs, var), _value_source(value.rhs, var)
        if op is None or lhs is None or rhs is None:
            return None
        return f"({lhs} {op} {rhs})"
    return None


#: The Python operator of each comparison and boolean Twisted's xpath parser builds.
_OPERATORS = {xpath.CompareValue._compareEqual: "==", xpath.CompareValue._compareNotEqual: "!=",
              xpath.BooleanValue._booleanAnd: "and", xpath.BooleanValue._booleanOr: "or"}


#: Deepest query translated (the gateway's are at most three steps deep).
_MAX_DEPTH = 4


def compile_query(query: xpath.XPathQuery):
    """
    A function of one element computing what ``query.matches(element)`` does, as
    one body of nested loops instead of a ``matches`` and a ``matchesPredicates``
    call per step, a call per predicate and per value, and a generator over each
    element's children: for the usual ``/message/x[@xmlns='…']/invite``, 2 calls a
    stanza instead of about 14 (issue 12). Only plain steps (``/name``, ``/*``)
    whose predicates compare attributes and literals with ``=``/``!=``, ``and``,
    ``or``; anything else (``//``, indices, functions) is None and the query's own
    ``matches`` is used. Truthiness and child order are the same as Twisted's.
    ``tests/unit/test_dispatch_compiled.py`` compares the two on random queries
    and stanzas.
    """
    steps = []
    location = getattr(query, "baseLocation", None)
    while location is not None:
        if type(location) is not xpath._Location or len(steps) >= _MAX_DEPTH:
            return None
        steps.append(location)
        location = location.childLocation
    if not steps:
        return None
    lines = ["def match(e0):"]
    indent = "    "
    for depth, step in enumerate(steps):
        var = f"e{depth}"
        checks = []
        if step.elementName is not None:
            checks.append(f"{var}.name == {step.elementName!r}")
        for predicate in step.predicates:
            source = _value_source(predicate, var)
            if source is None:
                return None
            checks.append(source)
        if depth > 0:
            lines.append(f"{indent}for {var} in e{depth - 1}.children:")
            indent += "    "
            lines.append(f"{indent}if not provided({var}):")
            lines.append(f"{indent}    continue")
        for check in checks:
            lines.append(f"{indent}if not {check}:")
            lines.append(f"{indent}    {'continue' if depth > 0 else 'return False'}")
    lines.append(f"{indent}return True")
    if len(steps) > 1:
        lines.append("    return False")
    namespace = {"provided": domish.IElement.providedBy}
    exec(compile("\n".join(lines), f"<xpath {query.queryStr!r}>", "exec"), namespace)
    return namespace["match"]


def _name_only(query: xpath.XPathQuery) -> bool:
    """Whether matching the root name is all the query checks."""
    base = query.baseLocation
    return not base.predicates and base.childLocation is None


_COMPILED: dict = {}


def _compiled(query: xpath.XPathQuery):
    """compile_query's matcher, kept per query string (the streams' queries are a fixed few)."""
    if type(query) is not xpath.XPathQuery:
        return query.matches                # a subclass may match its own way
    key = query.queryStr
    match = _COMPILED.get(key)
    if match is None:
        match = compile_query(query) or query.matches
        if len(_COMPILED) < 1024:
            _COMPILED[key] = match
    return match


class StanzaRouter(utility.EventDispatcher):
    """
    An ``EventDispatcher`` (mixin for ``XmlStream``) whose XPath dispatch goes by
    element name. Named events (``//event/...``) are dispatched as before.
    """

    #: element name -> ((priority, query, callbacks, match, methods), ...); None: build on next
    #: dispatch. ``match``: None when the root name is all there is to check, else the query's
    #: compiled matcher (compile_query) or its own ``matches``. ``methods``: the observers to
    #: call directly (_plain_methods), or None.
    _routes: dict | None = None
    #: The entries for names no query is rooted at: the queries that match any element.
    _unrouted: tuple = ()

    def _addObserver(self, onetime, event, observerfn, priority, *args, **kwargs):
        self._routes = None
        super()._addObserver(onetime, event, observerfn, priority, *args, **kwargs)

    def removeObserver(self, event, observerfn):
        self._routes = None
        super().removeObserver(event, observerfn)

    def _build_routes(self) -> dict:
        entries = []
        for priority in sorted(self._xpathObservers, reverse=True):
            for query, callbacks in self._xpathObservers[priority].items():
                name = _root_name(query)
                if name is not None and _name_only(query):
                    match = None
                else:
                    match = _compiled(query)
                entries.append((name, (priority, query, callbacks, match, _plain_methods(callbacks))))
        names = {name for name, _ in entries if name is not None}
        routes = {n: tuple(e for name, e in entries if name is None or name == n) for n in names}
        self._unrouted = tuple(e for name, e in entries if name is None)
        self._routes = routes
        return routes

    def dispatch(self, obj, event=None):
        if event is not None:
            return super().dispatch(obj, event)
        routes = self._routes
        if routes is None:
            routes = self._build_routes()
        entries = routes.get(obj.name, None)
        if entries is None:
            entries = self._unrouted
        found = False
        self._dispatchDepth += 1
        try:
            emptied = None
            for priority, query, callbacks, match, methods in entries:
                if match is not None and not match(obj):
                    continue
                if methods is None:
                    callbacks.callback(obj)
                else:
                    # What CallbackList.callback does for these (the index is rebuilt when they change).
                    for method in methods:
                        try:
                            method(obj)
                        except BaseException:
                            log.err()
                found = True
                if not callbacks.callbacks:
                    if emptied is None:
                        emptied = []
                    emptied.append((priority, query, callbacks))
            if emptied:
                for priority, query, callbacks in emptied:
                    observers = self._xpathObservers.get(priority)
                    # A nested dispatch may have removed it already.
                    if observers is not None and observers.get(query) is callbacks and not callbacks.callbacks:
                        del observers[query]
                self._routes = None
        finally:
            self._dispatchDepth -= 1
        if self._dispatchDepth == 0 and self._updateQueue:
            updates, self._updateQueue = self._updateQueue, []
            for update in updates:
                update()
        return found


class RoutedXmlStream(StanzaRouter, xmlstream.XmlStream):
    """
    The Jabber ``XmlStream`` with ``StanzaRouter``'s dispatch and the lean
    parser (gateway/xmpp/parser.py): what component streams are built from.
    """

    def _initializeStream(self) -> None:
        self.stream = element_stream()
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd
