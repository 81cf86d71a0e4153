// The runs list: a heading's button sorts by its column (again to reverse), told to screen
// readers through aria-sort; dates shown in local time.
"use strict";
(function () {
  for (const td of document.querySelectorAll("td.date")) {
    td.textContent = new Date(Number(td.dataset.time) * 1000).toLocaleString();
  }
  const table = document.getElementById("runs");
  if (!table) return;
  const headings = Array.from(table.querySelectorAll("th[data-type]"));
  headings.forEach((th, i) => {
    th.querySelector("button").addEventListener("click", () => {
      const col = i + 1;
      const numeric = th.dataset.type === "number";
      const asc = th.getAttribute("aria-sort") !== "ascending";
      for (const other of headings) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      const rows = Array.from(table.tBodies[0].rows);
      const key = (tr) => {
        const td = tr.cells[col];
        if (!td) return numeric ? NaN : "";
        return numeric ? parseFloat(td.dataset.value) : td.textContent.trim().toLowerCase();
      };
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (numeric) {
          if (isNaN(x)) return 1;
          if (isNaN(y)) return -1;
          return asc ? x - y : y - x;
        }
        return asc ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach((tr) => table.tBodies[0].appendChild(tr));
    });
  });
})();
