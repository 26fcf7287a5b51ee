// markguard console: keyboard shortcuts for the review queue and the listing view, and the upload
// progress bar. No inline script anywhere (the Content-Security-Policy allows only this file).
(function () {
  "use strict";

  function typing(event) {
    var t = event.target;
    return t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
  }

  function submitReview(form, label) {
    if (form.dataset.sent) { return; }
    form.dataset.sent = "1";
    if (typeof form.requestSubmit === "function") {
      var button = form.querySelector('button[value="' + label + '"]');
      if (button) { form.requestSubmit(button); return; }
      form.requestSubmit();
    } else {
      form.submit();
    }
  }

  function queueKeys(table) {
    var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr.item"));
    var i = 0;
    function select(n) {
      if (!rows.length) { return; }
      rows[i].classList.remove("current");
      i = Math.max(0, Math.min(rows.length - 1, n));
      rows[i].classList.add("current");
      rows[i].scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("keydown", function (event) {
      if (typing(event) || event.ctrlKey || event.metaKey || event.altKey || !rows.length) { return; }
      var row = rows[i];
      if (event.key === "g" || event.key === "c") {
        var form = row.querySelector(event.key === "g" ? "form.review-genuine" : "form.review-counterfeit");
        event.preventDefault();
        submitReview(form);
      } else if (event.key === "s" || event.key === "j") {
        event.preventDefault();
        select(i + 1);
      } else if (event.key === "k") {
        event.preventDefault();
        select(i - 1);
      } else if (event.key === "Enter" && event.target === document.body) {
        event.preventDefault();
        window.location.assign(row.dataset.href);
      }
    });
  }

  function listingKeys(form) {
    document.addEventListener("keydown", function (event) {
      if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) { return; }
      if (event.key === "g" || event.key === "c") {
        event.preventDefault();
        submitReview(form, event.key === "g" ? "genuine" : "counterfeit");
      } else if (event.key === "s") {
        event.preventDefault();
        window.location.assign(document.getElementById("skip").getAttribute("href"));
      }
    });
  }

  function uploadProgress(form) {
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round((100 * e.loaded) / e.total);
          status.textContent = bar.value < 100 ? "Uploading… " + bar.value + "%" : "Enrolling…";
        }
      });
      xhr.addEventListener("load", function () {
        bar.value = 100;
        if (xhr.status >= 200 && xhr.status < 300 && xhr.responseURL) {
          window.location.assign(xhr.responseURL);
        } else {
          var page = new DOMParser().parseFromString(xhr.responseText, "text/html");
          var error = page.getElementById("error");
          status.textContent = "Upload refused (" + xhr.status + "): " + (error ? error.textContent : "");
        }
      });
      xhr.addEventListener("error", function () { status.textContent = "Upload failed."; });
      status.textContent = "Uploading…";
      xhr.send(new FormData(form));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var queue = document.querySelector('[data-keyboard="queue"]');
    if (queue) { queueKeys(queue); }
    var review = document.querySelector('[data-keyboard="listing"]');
    if (review) { listingKeys(review); }
    var upload = document.querySelector("form[data-upload]");
    if (upload) { uploadProgress(upload); }
  });
})();
