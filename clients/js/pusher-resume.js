/*
 * Herald's resume helper for unmodified pusher-js (docs/pusher.md, "Resume").
 *
 *   <script src="https://js.pusher.com/8.4/pusher.min.js"></script>
 *   <script src="https://herald.example.com/pusher-resume.js"></script>
 *   const pusher = new Pusher("app-key", { wsHost: "herald.example.com", ... });
 *   HeraldPusherResume.attach(pusher, { onGap: (channel) => reloadState(channel) });
 *
 * Herald puts its message id on every event frame (`herald_id`, a field
 * pusher-js does not keep). This helper reads it off each frame as the
 * transport delivers it (WebSocket or the HTTP fallbacks alike) and
 * remembers the last one per channel; when pusher-js subscribes again after
 * a reconnect, the helper adds `herald_since` to the subscribe, and Herald
 * sends every event published meanwhile, once and in order, before the
 * live ones. When history no longer reaches that far back the channel gets
 * the event `herald:gap` first (bind it like any event, or pass `onGap`).
 *
 * Without this helper, Herald behaves as Pusher does: nothing is replayed.
 * It relies on two parts of pusher-js that are not documented API
 * (`pusher.send_event`, and the transport under `pusher.connection`),
 * stable from pusher-js 7 to 8 and tested with the version in package.json.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.HeraldPusherResume = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  var GAP = "herald:gap";

  function attach(pusher, options) {
    options = options || {};
    if (pusher.__heraldResume) return pusher.__heraldResume;
    var last = Object.create(null);

    function watch() {
      var connection = pusher.connection && pusher.connection.connection;
      var transport = connection && connection.transport;
      if (!transport || transport.__heraldResume) return;
      transport.__heraldResume = true;
      transport.bind("message", function (message) {
        var frame;
        try {
          frame = JSON.parse(message.data);
        } catch (e) {
          return;
        }
        if (!frame || typeof frame.channel !== "string") return;
        if (typeof frame.herald_id === "string" && pusher.channel(frame.channel)) {
          last[frame.channel] = frame.herald_id;
        }
        if (frame.event === GAP && typeof options.onGap === "function") {
          options.onGap(frame.channel);
        }
      });
    }

    var sendEvent = pusher.send_event.bind(pusher);
    pusher.send_event = function (name, data, channel) {
      if (name === "pusher:subscribe" && data && last[data.channel] !== undefined) {
        var resumed = {};
        for (var k in data) resumed[k] = data[k];
        resumed.herald_since = last[data.channel];
        return sendEvent(name, resumed, channel);
      }
      if (name === "pusher:unsubscribe" && data) delete last[data.channel];
      return sendEvent(name, data, channel);
    };

    pusher.connection.bind("connected", watch);
    watch();
    var handle = {
      /** The last Herald id seen on `channel`, if any. */
      lastId: function (channel) {
        return last[channel];
      },
      /** Forgets `channel`'s point: its next subscribe is a fresh one. */
      forget: function (channel) {
        delete last[channel];
      },
    };
    pusher.__heraldResume = handle;
    return handle;
  }

  return { attach: attach, GAP_EVENT: GAP };
});
