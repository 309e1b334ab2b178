// Sort any table.sortable by the column whose header button is clicked: numbers (the cell's
// data-sort value) numerically, text alphabetically, empty cells last; a second click reverses.
(function () {
  "use strict";
  function key(cell) {
    var raw = cell ? cell.getAttribute("data-sort") : "";
    if (raw === null || raw === "") { return { empty: true }; }
    var value = Number(raw);
    return isNaN(value) ? { text: raw.toLowerCase() } : { number: value };
  }
  function compare(a, b) {
    if (a.empty || b.empty) { return a.empty === b.empty ? 0 : (a.empty ? 1 : -1); }
    if (a.number !== undefined && b.number !== undefined) { return a.number - b.number; }
    var x = a.number !== undefined ? String(a.number) : a.text;
    var y = b.number !== undefined ? String(b.number) : b.text;
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  function sortBy(table, header) {
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var column = headers.indexOf(header);
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, key: key(row.cells[column]), index: index };
    });
    rows.sort(function (a, b) {
      var order = compare(a.key, b.key);
      if (!ascending && !(a.key.empty || b.key.empty)) { order = -order; }
      return order || a.index - b.index;
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header) {
      var button = header.querySelector("button") || header;
      button.addEventListener("click", function () { sortBy(table, header); });
    });
  });
}());
