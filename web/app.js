/* app.js: the behaviour of the customer's page.
 *
 * The page talks only to the gateway that served it (relative URLs), in the
 * contract's terms:
 *   POST accounts, POST sessions                create an account, sign in (a JWT)
 *   GET  cars?from&to                           the fleet, free for the chosen dates (refreshed
 *                                               every 15 s and after actions)
 *   POST orders   + Idempotency-Key             rent and pay for a period, answered synchronously
 *   GET  customerpages/search/findByCustomerId  "My rentals", polled every 1.5 s
 *   GET  customerpages                          staff: every rental, polled the same way
 *   DELETE orders/{id}                          cancel (staff: any rental)
 *   POST orders/{id}/return                     give the car back
 *
 * Dates: a rental is a start date and a number of days (1 to 30), in the
 * company's calendar (Asia/Seoul, the order service's default TIME_ZONE):
 * "today" is Seoul's today whatever the browser's zone, and `to` (the day
 * the car is due back) is start + days. The price shown before paying is
 * qty x days x the daily price, the server's own rule.
 *
 * Signing in. Every call but the fleet and signing in carries the token
 * (Authorization: Bearer). The token lives in memory and in sessionStorage
 * (this tab only, gone when it closes; a reload keeps you signed in), never
 * in localStorage, where every later visitor of this browser profile would
 * find it. An answer 401 to a call made with a token means it expired or
 * its key was rotated: the page forgets it and shows the sign-in form with
 * a message saying so; it also does that by itself when the token's own
 * expiry (its "exp") passes. Signing out forgets the token (tokens are
 * stateless: there is nothing to tell the server). The server decides what
 * a role may do; the page only shows staff the staff view (every rental,
 * with its payment and delivery, cancel any) instead of the fleet.
 *
 * Why polling and not a stream: the customer page is a read model fed by
 * events, eventually consistent; a short poll through the plain gateway is
 * robust to restarts of any service, proxies and sleeping laptops. One poll
 * at a time (never overlapping), paused while the tab is hidden, backing off
 * exponentially on errors, and a generation counter drops answers that
 * belong to a customer who is no longer the one on screen.
 *
 * Why "processing" placeholders: an approved order is known at once (201),
 * but the customer page learns of it a moment later from events. The order
 * is shown as "processing" from the 201 until the read model has it (kept
 * in localStorage, so a reload in between does not lose it).
 *
 * Why an Idempotency-Key per press of "Rent": the order service stores it
 * with the rental intake; a repeat of the same key returns the first
 * outcome instead of renting again. The button is disabled while a request
 * is in flight; when the network failed without an answer, the next press
 * with the same choices reuses the key, so "press again" is always safe.
 *
 * All text is in STRINGS (English and Korean); server data is put in the
 * page with textContent only, never as HTML. */
'use strict';

(function () {
  // ---- tunables ----
  const POLL_MS = 1500;               // My rentals, while the tab is visible
  const POLL_MAX_MS = 30000;          // backoff ceiling on errors
  const FLEET_REFRESH_MS = 15000;     // availability changes as others rent
  const REQUEST_TIMEOUT_MS = 10000;
  const RENT_TIMEOUT_MS = 35000;      // the intake waits for payment; give it time
  const PENDING_TTL_MS = 15 * 60 * 1000;
  const PENDING_SLOW_MS = 20000;
  const RETRY_AFTER_CAP_S = 60;
  const NAME_MAX = 100;
  const ID_PATTERN = /^[a-z0-9._-]{3,64}$/;
  const PASSWORD_MIN = 10;
  const SESSION_KEY = 'carshare.session';
  const MAX_DAYS = 30;                // the contract's longest rental
  const MAX_AHEAD_DAYS = 90;          // how far ahead a rental may start
  const COMPANY_TIME_ZONE = 'Asia/Seoul';

  // Status of a rental on the customer page, by rank (the contract's order).
  const STATUSES = {
    OrderApproved: { rank: 1, tone: 'info', key: 'stApproved' },
    Shipped: { rank: 2, tone: 'ok', key: 'stShipped' },
    Returned: { rank: 3, tone: 'neutral', key: 'stReturned' },
    OrderCancelled: { rank: 4, tone: 'warn', key: 'stOrderCancelled' },
    DeliveryCancelled: { rank: 5, tone: 'warn', key: 'stDeliveryCancelled' },
    PaymentCancelled: { rank: 6, tone: 'neutral', key: 'stRefunded' },
  };
  const RETURNED_RANK = 3;            // from here on a rental has ended: no cancel, no return
  const CANCELLED_RANK = 4;

  // History entries are labelled by event type; the seed's spellings first.
  const EVENT_LABELS = {
    Ordered: 'evOrdered',
    Paid: 'evPaid',
    Shipped: 'evShipped',
    Returned: 'evReturned',
    OrderCancelled: 'evOrderCancelled',
    DeliveryCanceled: 'evDeliveryCanceled',
    DeliveryCancelled: 'evDeliveryCanceled',
    PayCancelled: 'evPayCancelled',
    PaymentCancelled: 'evPayCancelled',
  };

  const STRINGS = {
    en: {
      title: 'carshare · Rent a car',
      skip: 'Skip to content',
      brandSub: 'Car sharing',
      changeName: 'Change',
      signOut: 'Sign out',
      staffBadge: 'Staff',
      authModes: 'Sign in or create an account',
      signInTab: 'Sign in',
      signUpTab: 'Create account',
      signInButton: 'Sign in',
      signUpButton: 'Create account',
      signingIn: 'Signing in…',
      idLabel: 'Customer ID',
      idHint: '3 to 64 characters: a-z, 0-9, dot, dash, underscore.',
      idBad: 'Use 3 to 64 characters: lower-case letters, digits, dot, dash or underscore.',
      passwordLabel: 'Password',
      passwordHint: 'At least {min} characters; common passwords are refused.',
      passwordShort: 'The password needs at least {min} characters.',
      passwordEmpty: 'Please enter your password.',
      authThrottled: 'Too many attempts. Try again in {s} s.',
      sessionExpired: 'Your session has expired. Please sign in again.',
      signedOut: 'You are signed out.',
      staffTitle: 'All rentals',
      factCustomer: 'Customer',
      factPayment: 'Payment',
      factDelivery: 'Delivery',
      payPaid: 'paid',
      payRefunded: 'refunded',
      payNone: '—',
      delShipped: 'delivered',
      delCancelled: 'cancelled',
      delReturned: 'returned',
      delPending: 'pending',
      rentalsEmptyStaff: 'No rentals yet.',
      langHint: 'Switch language',
      welcomeTitle: 'Welcome to carshare',
      welcomeText: 'Sign in to rent a car and follow your rentals, or create an account in a moment.',
      nameLabel: 'Your name',
      nameSave: 'Continue',
      nameCancel: 'Cancel',
      nameEmpty: 'Please enter your name.',
      nameTooLong: 'Please use at most {max} characters.',
      nameBad: 'The name contains characters we cannot use.',
      fleetTitle: 'Rent a car',
      fleetText: 'Choose a model. Prices are per day, and the car is brought to you.',
      chooseModel: 'Choose a model',
      loadingCars: 'Loading cars…',
      fleetError: 'We could not load the cars ({reason}).',
      fleetEmpty: 'No cars are offered right now.',
      retry: 'Try again',
      perDay: '/ day',
      availOf: '{available} of {total} available',
      availOfDates: '{available} of {total} free on these dates',
      soldOut: 'None available',
      soldOutDates: 'None free on these dates',
      checkoutTitle: 'Your rental',
      noneSelected: 'Choose a model from the list.',
      datesLabel: 'Rental dates',
      fromLabel: 'Start date',
      daysLabel: 'Days',
      daysLess: 'One day fewer',
      daysMore: 'One day more',
      periodHint: '{days} days · due back {to}',
      periodHintOne: '1 day · due back {to}',
      fromInvalid: 'Choose a start date from {min} to {max}.',
      daysInvalid: 'Choose 1 to {max} days.',
      periodText: '{from} → {to} · {days} days',
      periodTextOne: '{from} → {to} · 1 day',
      qtyLabel: 'Number of cars',
      qtyLess: 'One car fewer',
      qtyMore: 'One car more',
      qtyHint: 'Up to {max} available.',
      qtyHintNone: 'Choose a model first.',
      qtyInvalid: 'Choose a number from 1 to {max}.',
      cardLabel: 'Card number',
      optional: '(optional)',
      cardHint: 'Test card 4000 0000 0000 0002 is always declined; any other card, or none, is approved.',
      cardInvalid: 'A card number has 12 to 19 digits. Leave it empty to pay without a card.',
      totalLabel: 'Total',
      totalFor: 'Total for {days} days',
      totalForOne: 'Total for 1 day',
      rentButton: 'Rent and pay {amount}',
      rentButtonNone: 'Rent and pay',
      renting: 'Paying…',
      waitButton: 'Try again in {s} s',
      outApprovedTitle: 'Rental approved',
      outApprovedDetail: 'Order #{id} · {amount} charged.',
      outApprovedNext: 'Your car is on its way. Follow it in My rentals.',
      seeRentals: 'See My rentals',
      outDeclinedTitle: 'Payment declined',
      outDeclinedNext: 'Nothing was charged. You can try another card.',
      outBusyTitle: 'Payment is busy, try again shortly',
      outBusyNext: 'Nothing was charged and no car was reserved.',
      outRetryAfter: 'The service asks to wait {s} s before trying again.',
      outConflictTitle: 'Not enough cars available',
      outConflictNext: 'Availability was updated; choose fewer cars or another model.',
      outInvalidTitle: 'Please check your rental',
      outNotFoundTitle: 'This model is no longer offered',
      outErrorTitle: 'Something went wrong (HTTP {status})',
      outNetworkTitle: 'Could not reach carshare',
      outNetworkNext: 'Check your connection and press Rent again: pressing again never rents twice.',
      rentalsTitle: 'My rentals',
      rentalsEmpty: 'No rentals yet. Your rentals appear here as soon as they are confirmed.',
      liveOn: 'Live',
      liveRetry: 'Reconnecting…',
      livePaused: 'Paused',
      rentalsError: 'Could not update your rentals ({reason}). Trying again in {s} s.',
      orderNo: 'Order #{id}',
      carTimes: '{name} × {qty}',
      unknownCar: 'Car {id}',
      rentedAt: 'rented {time}',
      historyLabel: 'History',
      refunded: 'refunded',
      stApproved: 'Confirmed',
      stShipped: 'Delivered',
      stReturned: 'Returned',
      stReturning: 'Returning…',
      stOrderCancelled: 'Cancelled · refund pending',
      stDeliveryCancelled: 'Cancelled · refund pending',
      stRefunded: 'Cancelled · refunded',
      stProcessing: 'Processing',
      stCancelling: 'Cancelling…',
      processingText: 'Confirming your rental…',
      processingSlow: 'Still confirming; this can take a moment.',
      evOrdered: 'Rental confirmed',
      evPaid: 'Payment approved',
      evShipped: 'Car delivered',
      evReturned: 'Car returned',
      evOrderCancelled: 'Rental cancelled',
      evDeliveryCanceled: 'Delivery cancelled',
      evPayCancelled: 'Payment refunded',
      cancelButton: 'Cancel rental',
      cancelTitle: 'Cancel this rental?',
      cancelText: '{car}, order #{id}. The rental ends and {amount} is refunded to your card.',
      cancelKeep: 'Keep rental',
      cancelConfirm: 'Cancel rental',
      cancelSent: 'Cancellation of order #{id} received. The refund follows in a moment.',
      cancelFailed: 'Could not cancel: {reason}',
      returnButton: 'Return the car',
      returnTitle: 'Return the car?',
      returnText: '{car}, order #{id}, booked {period}. The rental ends now; the car is free again from tomorrow. Returning early is not refunded.',
      returnKeep: 'Not yet',
      returnConfirm: 'Return the car',
      returnSent: 'Order #{id}: the car is returned. Thank you!',
      returnFailed: 'Could not return: {reason}',
      statusNow: 'Order #{id}: {status}',
      footer: 'carshare · demo service. Payments are simulated; no real card is charged.',
      continue: 'Continue',
      netError: 'no answer from the server',
      httpError: 'HTTP {status}',
    },
    ko: {
      title: 'carshare · 차량 대여',
      skip: '본문으로 건너뛰기',
      brandSub: '카셰어링',
      changeName: '변경',
      signOut: '로그아웃',
      staffBadge: '직원',
      authModes: '로그인 또는 계정 만들기',
      signInTab: '로그인',
      signUpTab: '계정 만들기',
      signInButton: '로그인',
      signUpButton: '계정 만들기',
      signingIn: '로그인 중…',
      idLabel: '고객 ID',
      idHint: '3~64자: 영문 소문자, 숫자, 점(.), 하이픈(-), 밑줄(_).',
      idBad: '영문 소문자, 숫자, 점, 하이픈, 밑줄로 3~64자를 입력해 주세요.',
      passwordLabel: '비밀번호',
      passwordHint: '{min}자 이상. 흔히 쓰이는 비밀번호는 사용할 수 없습니다.',
      passwordShort: '비밀번호는 {min}자 이상이어야 합니다.',
      passwordEmpty: '비밀번호를 입력해 주세요.',
      authThrottled: '시도가 너무 많습니다. {s}초 후에 다시 시도해 주세요.',
      sessionExpired: '로그인이 만료되었습니다. 다시 로그인해 주세요.',
      signedOut: '로그아웃되었습니다.',
      staffTitle: '전체 대여',
      factCustomer: '고객',
      factPayment: '결제',
      factDelivery: '배송',
      payPaid: '결제 완료',
      payRefunded: '환불됨',
      payNone: '—',
      delShipped: '배송 완료',
      delCancelled: '배송 취소',
      delReturned: '반납 완료',
      delPending: '대기',
      rentalsEmptyStaff: '아직 대여가 없습니다.',
      langHint: '언어 전환',
      welcomeTitle: 'carshare에 오신 것을 환영합니다',
      welcomeText: '로그인하면 차를 빌리고 대여 현황을 볼 수 있습니다. 계정은 바로 만들 수 있습니다.',
      nameLabel: '이름',
      nameSave: '계속',
      nameCancel: '취소',
      nameEmpty: '이름을 입력해 주세요.',
      nameTooLong: '{max}자 이내로 입력해 주세요.',
      nameBad: '사용할 수 없는 문자가 있습니다.',
      fleetTitle: '차량 대여',
      fleetText: '차종을 고르세요. 요금은 1일 기준이며, 차량은 고객님께 가져다 드립니다.',
      chooseModel: '차종 선택',
      loadingCars: '차량을 불러오는 중…',
      fleetError: '차량 목록을 불러오지 못했습니다 ({reason}).',
      fleetEmpty: '지금은 대여할 수 있는 차량이 없습니다.',
      retry: '다시 시도',
      perDay: '/ 1일',
      availOf: '{total}대 중 {available}대 가능',
      availOfDates: '선택한 날짜에 {total}대 중 {available}대 가능',
      soldOut: '대여 가능 차량 없음',
      soldOutDates: '선택한 날짜에 대여 가능 차량 없음',
      checkoutTitle: '대여 정보',
      noneSelected: '목록에서 차종을 고르세요.',
      datesLabel: '대여 기간',
      fromLabel: '대여 시작일',
      daysLabel: '대여 일수',
      daysLess: '하루 줄이기',
      daysMore: '하루 늘리기',
      periodHint: '{days}일 · {to} 반납',
      periodHintOne: '1일 · {to} 반납',
      fromInvalid: '{min}부터 {max}까지의 날짜를 고르세요.',
      daysInvalid: '1일부터 {max}일까지 고를 수 있습니다.',
      periodText: '{from} → {to} · {days}일',
      periodTextOne: '{from} → {to} · 1일',
      qtyLabel: '대수',
      qtyLess: '한 대 줄이기',
      qtyMore: '한 대 늘리기',
      qtyHint: '최대 {max}대까지 가능합니다.',
      qtyHintNone: '먼저 차종을 고르세요.',
      qtyInvalid: '1부터 {max}까지 고를 수 있습니다.',
      cardLabel: '카드 번호',
      optional: '(선택)',
      cardHint: '테스트 카드 4000 0000 0000 0002는 항상 거절됩니다. 다른 카드나 카드 없이 결제하면 승인됩니다.',
      cardInvalid: '카드 번호는 12~19자리 숫자입니다. 카드 없이 결제하려면 비워 두세요.',
      totalLabel: '합계',
      totalFor: '{days}일 합계',
      totalForOne: '1일 합계',
      rentButton: '{amount} 결제하고 대여',
      rentButtonNone: '결제하고 대여',
      renting: '결제 중…',
      waitButton: '{s}초 후 다시 시도',
      outApprovedTitle: '대여가 승인되었습니다',
      outApprovedDetail: '주문 #{id} · {amount} 결제 완료.',
      outApprovedNext: '차량을 보내 드리고 있습니다. 내 대여에서 확인하세요.',
      seeRentals: '내 대여 보기',
      outDeclinedTitle: '결제가 거절되었습니다',
      outDeclinedNext: '결제된 금액은 없습니다. 다른 카드로 시도해 보세요.',
      outBusyTitle: '결제가 혼잡합니다. 잠시 후 다시 시도해 주세요',
      outBusyNext: '결제되지 않았고 차량도 예약되지 않았습니다.',
      outRetryAfter: '{s}초 후에 다시 시도해 주세요.',
      outConflictTitle: '대여 가능한 차량이 부족합니다',
      outConflictNext: '대여 가능 대수를 새로 고쳤습니다. 대수를 줄이거나 다른 차종을 고르세요.',
      outInvalidTitle: '대여 정보를 확인해 주세요',
      outNotFoundTitle: '더 이상 제공되지 않는 차종입니다',
      outErrorTitle: '문제가 발생했습니다 (HTTP {status})',
      outNetworkTitle: 'carshare에 연결할 수 없습니다',
      outNetworkNext: '연결을 확인하고 다시 눌러 주세요. 다시 눌러도 한 번만 대여됩니다.',
      rentalsTitle: '내 대여',
      rentalsEmpty: '아직 대여 내역이 없습니다. 대여가 확정되면 여기에 표시됩니다.',
      liveOn: '실시간',
      liveRetry: '다시 연결 중…',
      livePaused: '일시 정지',
      rentalsError: '대여 현황을 새로 고치지 못했습니다 ({reason}). {s}초 후 다시 시도합니다.',
      orderNo: '주문 #{id}',
      carTimes: '{name} × {qty}',
      unknownCar: '차량 {id}',
      rentedAt: '{time} 대여',
      historyLabel: '진행 내역',
      refunded: '환불됨',
      stApproved: '예약 확정',
      stShipped: '배송 완료',
      stReturned: '반납 완료',
      stReturning: '반납 중…',
      stOrderCancelled: '취소됨 · 환불 대기',
      stDeliveryCancelled: '취소됨 · 환불 대기',
      stRefunded: '취소 · 환불 완료',
      stProcessing: '처리 중',
      stCancelling: '취소 중…',
      processingText: '대여를 확정하는 중…',
      processingSlow: '확정에 시간이 조금 더 걸리고 있습니다.',
      evOrdered: '대여 확정',
      evPaid: '결제 승인',
      evShipped: '차량 배송',
      evReturned: '차량 반납',
      evOrderCancelled: '대여 취소',
      evDeliveryCanceled: '배송 취소',
      evPayCancelled: '결제 환불',
      cancelButton: '대여 취소',
      cancelTitle: '이 대여를 취소할까요?',
      cancelText: '{car}, 주문 #{id}. 대여가 종료되고 {amount}이 카드로 환불됩니다.',
      cancelKeep: '대여 유지',
      cancelConfirm: '대여 취소',
      cancelSent: '주문 #{id} 취소를 접수했습니다. 곧 환불됩니다.',
      cancelFailed: '취소하지 못했습니다: {reason}',
      returnButton: '차량 반납',
      returnTitle: '차량을 반납할까요?',
      returnText: '{car}, 주문 #{id}, 예약 기간 {period}. 대여가 지금 끝나고 차량은 내일부터 다시 대여할 수 있습니다. 일찍 반납해도 환불되지 않습니다.',
      returnKeep: '나중에',
      returnConfirm: '차량 반납',
      returnSent: '주문 #{id} 차량이 반납되었습니다. 감사합니다!',
      returnFailed: '반납하지 못했습니다: {reason}',
      statusNow: '주문 #{id}: {status}',
      footer: 'carshare · 데모 서비스입니다. 결제는 모의로 처리되며 실제 카드에는 청구되지 않습니다.',
      continue: '계속',
      netError: '서버 응답 없음',
      httpError: 'HTTP {status}',
    },
  };
  const LANG_NAMES = { en: 'English', ko: '한국어' };
  const LANG_SHORT = { en: 'EN', ko: '한국어' };   // the phone's top bar has little room

  // ---- state ----
  const state = {
    lang: 'en',
    customer: null,           // the signed-in customerId (session.customerId)
    session: null,            // {token, customerId, role, exp}: memory and sessionStorage only
    authMode: 'signin',       // or 'signup'
    authBusy: false,
    authRetryUntil: 0,
    cars: [],                 // from GET cars, in the server's order
    fleetLoaded: false,
    fleetError: null,
    fleetLoading: false,
    selectedId: null,
    from: null,               // the chosen start date, YYYY-MM-DD (company calendar)
    days: 1,
    renting: false,
    retryKey: null,           // {key, signature}: reuse after an unanswered POST
    retryUntil: 0,            // Date.now() until which Retry-After asks to wait
    outcome: null,            // the last answer to "rent", re-rendered on language change
    rentals: new Map(),       // orderId -> customer page item
    rentalsLoaded: false,
    pending: new Map(),       // orderId -> {orderId, productId, qty, amount, createdAt}
    cancelling: new Set(),    // orderIds whose DELETE succeeded, until the view shows it
    cancelInFlight: new Set(),
    rentalErrors: new Map(),  // orderId -> message of a failed cancel or return
    returning: new Set(),     // orderIds whose return is in flight
    dialogOrderId: null,
    returnDialogOrderId: null,
  };

  const poll = { timer: null, controller: null, gen: 0, failures: 0, again: false };
  const fleetTimer = { id: null };

  const $ = (id) => document.getElementById(id);
  const el = {};

  // ---- small helpers ----

  function t(key, vars) {
    const table = STRINGS[state.lang] || STRINGS.en;
    let s = key in table ? table[key] : (STRINGS.en[key] || key);
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
    return s;
  }

  function storageGet(key) {
    try { return window.localStorage.getItem(key); } catch (e) { return null; }
  }
  function sessionGet(key) {
    try { return window.sessionStorage.getItem(key); } catch (e) { return null; }
  }
  function sessionSet(key, value) {
    try {
      if (value === null) window.sessionStorage.removeItem(key);
      else window.sessionStorage.setItem(key, value);
    } catch (e) { /* private mode: the token stays in memory only */ }
  }
  function storageSet(key, value) {
    try {
      if (value === null) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch (e) { /* private mode or full: the page still works for this visit */ }
  }

  // replaceChildren() without the absent (null/false) parts.
  function fill(node, ...children) {
    node.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
  }

  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (name === 'text') node.textContent = value;
        else if (name === 'className') node.className = value;
        else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
        else node.setAttribute(name, value === true ? '' : String(value));
      }
    }
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    car: ['M5 16l1.6-4.8A2 2 0 0 1 8.5 10h7a2 2 0 0 1 1.9 1.2L19 16', 'M4 16h16v3h-2.5v-1.5h-11V19H4z',
          'M7.5 14h.01M16.5 14h.01'],
    pin: ['M12 21s-6-5.3-6-10a6 6 0 0 1 12 0c0 4.7-6 10-6 10z', 'M12 11h.01'],
    check: ['M5 12.5l4.5 4.5L19 7.5'],
    ok: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z', 'M8 12.5l2.7 2.7L16 9.8'],
    alert: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z', 'M12 7.5v5.5', 'M12 16.5h.01'],
    clock: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z', 'M12 7v5l3 2'],
  };
  function icon(name, className) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('class', 'icon' + (className ? ' ' + className : ''));
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    for (const d of ICONS[name]) {
      const path = document.createElementNS(SVG_NS, 'path');
      path.setAttribute('d', d);
      svg.append(path);
    }
    return svg;
  }

  function locale() { return state.lang === 'ko' ? 'ko-KR' : 'en-US'; }

  function money(value) {
    const n = Number(value);
    if (!Number.isFinite(n)) return '—';
    return state.lang === 'ko' ? n.toLocaleString('ko-KR') + '원' : '₩' + n.toLocaleString('en-US');
  }

  // "20261124015039" (UTC) -> Date, or null when malformed.
  // ---- dates (the company's calendar: see the note at the top) ----

  function companyToday() {
    // en-CA formats as YYYY-MM-DD.
    try {
      return new Intl.DateTimeFormat('en-CA', { timeZone: COMPANY_TIME_ZONE, year: 'numeric', month: '2-digit', day: '2-digit' })
        .format(new Date());
    } catch (e) {
      return new Date().toISOString().slice(0, 10);
    }
  }

  function isoDay(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(text || ''));
    if (!m) return null;
    const ms = Date.UTC(+m[1], +m[2] - 1, +m[3]);
    // Date.UTC rolls 2026-02-30 over to March: such a day does not exist.
    return new Date(ms).toISOString().slice(0, 10) === text ? ms / 86400000 : null;
  }

  function addDays(text, n) {
    const day = isoDay(text);
    return day === null ? null : new Date((day + n) * 86400000).toISOString().slice(0, 10);
  }

  function formatDay(text) {
    const day = isoDay(text);
    if (day === null) return String(text || '');
    return new Intl.DateTimeFormat(locale(), { timeZone: 'UTC', month: 'short', day: 'numeric', weekday: 'short' })
      .format(new Date(day * 86400000));
  }

  function periodText(from, to, days) {
    const n = Number(days) || ((isoDay(to) || 0) - (isoDay(from) || 0));
    return t(n === 1 ? 'periodTextOne' : 'periodText', { from: formatDay(from), to: formatDay(to), days: n });
  }

  // The chosen period: {from, to, days} when valid, else {error} naming the field.
  function readPeriod() {
    const today = companyToday();
    const latest = addDays(today, MAX_AHEAD_DAYS);
    const from = el.fromDate ? el.fromDate.value : state.from;
    const fromDay = isoDay(from);
    if (fromDay === null || fromDay < isoDay(today) || fromDay > isoDay(latest)) {
      return { error: 'from', message: t('fromInvalid', { min: formatDay(today), max: formatDay(latest) }) };
    }
    const rawDays = String(el.days ? el.days.value : state.days).trim();
    const days = /^\d+$/.test(rawDays) ? parseInt(rawDays, 10) : NaN;
    if (!(days >= 1 && days <= MAX_DAYS)) return { error: 'days', message: t('daysInvalid', { max: MAX_DAYS }) };
    return { from, to: addDays(from, days), days };
  }

  function parseStamp(stamp) {
    const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(String(stamp || ''));
    if (!m) return null;
    const d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function formatTime(date) {
    return new Intl.DateTimeFormat(locale(), {
      month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit',
    }).format(date);
  }

  // History steps: the time of day only, when the step happened today.
  function formatStepTime(date) {
    const today = new Date();
    const sameDay = date.getFullYear() === today.getFullYear() && date.getMonth() === today.getMonth()
      && date.getDate() === today.getDate();
    return sameDay
      ? new Intl.DateTimeFormat(locale(), { hour: 'numeric', minute: '2-digit', second: '2-digit' }).format(date)
      : formatTime(date);
  }

  function newIdempotencyKey() {
    // crypto.randomUUID exists only in secure contexts (https, localhost);
    // a page opened by LAN address still needs a strong random key.
    if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function carById(id) {
    return state.cars.find((c) => String(c.id) === String(id)) || null;
  }
  function carName(productId) {
    const car = carById(productId);
    return car && car.name ? car.name : t('unknownCar', { id: productId });
  }

  // ---- HTTP ----

  // One request to the gateway. Resolves with {status, data, headers} for
  // every HTTP answer (data: parsed JSON, text, or null); rejects only when
  // there was no answer (network, timeout, abort). Carries the session's
  // token unless opts.anonymous (signing in and up).
  async function request(method, path, options) {
    const opts = options || {};
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), opts.timeout || REQUEST_TIMEOUT_MS);
    if (opts.signal) {
      if (opts.signal.aborted) controller.abort();
      else opts.signal.addEventListener('abort', () => controller.abort(), { once: true });
    }
    const session = opts.anonymous ? null : state.session;
    const init = {
      method,
      headers: Object.assign({ Accept: 'application/json' },
        session ? { Authorization: 'Bearer ' + session.token } : {}, opts.headers || {}),
      signal: controller.signal,
      cache: 'no-store',
      credentials: 'same-origin',
    };
    if (opts.body !== undefined) {
      init.body = JSON.stringify(opts.body);
      init.headers['Content-Type'] = 'application/json';
    }
    try {
      const res = await fetch(path, init);
      const text = await res.text();
      let data = null;
      if (text) {
        try { data = JSON.parse(text); } catch (e) { data = text; }
      }
      // A token refused is an expired (or rotated-out) one: back to sign-in,
      // unless another sign-in replaced it meanwhile.
      if (res.status === 401 && session && state.session === session) sessionExpired();
      return { status: res.status, data, headers: res.headers };
    } finally {
      clearTimeout(timer);
    }
  }

  // The server's own words for a refusal (the contract's error body).
  function serverMessage(res) {
    if (res.data && typeof res.data === 'object' && typeof res.data.message === 'string' && res.data.message) {
      return res.data.message;
    }
    if (typeof res.data === 'string' && res.data.trim()) return res.data.trim().slice(0, 300);
    return t('httpError', { status: res.status });
  }

  // Retry-After: delta-seconds or an HTTP date. Returns seconds (>= 1) or 0.
  function retryAfterSeconds(headers) {
    const raw = headers && headers.get('Retry-After');
    if (!raw) return 0;
    let s = /^\s*\d+\s*$/.test(raw) ? parseInt(raw, 10) : Math.ceil((Date.parse(raw) - Date.now()) / 1000);
    if (!Number.isFinite(s) || s < 1) return 0;
    return Math.min(s, RETRY_AFTER_CAP_S);
  }

  // ---- language ----

  function applyLanguage(lang) {
    state.lang = STRINGS[lang] ? lang : 'en';
    storageSet('carshare.lang', state.lang);
    document.documentElement.lang = state.lang;
    document.title = t('title');
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll('[data-i18n-label]')) {
      node.setAttribute('aria-label', t(node.dataset.i18nLabel));
    }
    const other = state.lang === 'ko' ? 'en' : 'ko';
    el.langLabel.textContent = LANG_NAMES[other];
    el.langLabel.setAttribute('lang', other);
    el.langShort.textContent = LANG_SHORT[other];
    if (isStaff()) {
      el.rentalsTitle.textContent = t('staffTitle');
      el.rentalsEmpty.textContent = t('rentalsEmptyStaff');
    }
    renderAuth();
    renderFleet();
    renderCheckout();
    renderOutcome();
    renderRentals(true);
    setLive(el.live.dataset.state);
  }

  // ---- signing in ----

  function isStaff() { return !!state.session && state.session.role === 'staff'; }

  // The token's own claims, for its expiry: the server checks the signature,
  // the page only needs to know when to stop using it.
  function tokenClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    } catch (e) {
      return null;
    }
  }

  let expiryTimer = null;

  function setSession(session, remember) {
    state.session = session;
    clearTimeout(expiryTimer);
    expiryTimer = null;
    if (!session) {
      sessionSet(SESSION_KEY, null);
      return;
    }
    if (remember) sessionSet(SESSION_KEY, JSON.stringify(session));
    if (session.exp) {
      const ms = session.exp * 1000 - Date.now();
      // setTimeout holds at most ~24.8 days; a token lives an hour.
      if (ms < 2 ** 31) expiryTimer = setTimeout(sessionExpired, Math.max(0, ms));
    }
  }

  function sessionFromAnswer(data) {
    if (!data || typeof data.token !== 'string' || !data.token) return null;
    const claims = tokenClaims(data.token) || {};
    const expiresIn = Number(data.expiresIn);
    return {
      token: data.token,
      customerId: String(data.customerId || claims.sub || ''),
      role: String(data.role || claims.role || 'customer'),
      exp: Number(claims.exp) || (expiresIn > 0 ? Math.floor(Date.now() / 1000) + expiresIn : 0),
    };
  }

  function restoreSession() {
    let saved = null;
    try { saved = JSON.parse(sessionGet(SESSION_KEY) || 'null'); } catch (e) { saved = null; }
    if (!saved || typeof saved.token !== 'string' || !saved.customerId) return null;
    if (saved.exp && saved.exp * 1000 <= Date.now()) {
      sessionSet(SESSION_KEY, null);
      return 'expired';
    }
    return saved;
  }

  function setAuthMode(mode) {
    state.authMode = mode === 'signup' ? 'signup' : 'signin';
    const signup = state.authMode === 'signup';
    el.modeSignin.setAttribute('aria-pressed', String(!signup));
    el.modeSignup.setAttribute('aria-pressed', String(signup));
    el.nameField.hidden = !signup;
    el.authPassword.setAttribute('autocomplete', signup ? 'new-password' : 'current-password');
    el.authError.textContent = '';
    renderAuth();
  }

  function renderAuth() {
    const signup = state.authMode === 'signup';
    el.authIdHint.hidden = !signup;
    el.authPasswordHint.textContent = signup ? t('passwordHint', { min: PASSWORD_MIN }) : '';
    el.authPasswordHint.hidden = !signup;
    el.authSubmit.disabled = state.authBusy;
    el.authSubmit.setAttribute('aria-busy', String(state.authBusy));
    el.authSubmitLabel.textContent = state.authBusy ? t('signingIn') : t(signup ? 'signUpButton' : 'signInButton');
  }

  function showWelcome(notice) {
    el.welcome.hidden = false;
    el.app.hidden = true;
    el.who.hidden = true;
    document.body.dataset.role = 'none';
    el.authNotice.textContent = notice || '';
    if (notice) el.authNotice.dataset.kind = 'error';
    else el.authNotice.removeAttribute('data-kind');
    el.authPassword.value = '';
    el.authError.textContent = '';
    renderAuth();
    updateContinueBar();
    (el.authId.value ? el.authPassword : el.authId).focus();
  }

  function showApp() {
    el.welcome.hidden = true;
    el.app.hidden = false;
    el.who.hidden = false;
    el.whoName.textContent = state.customer;
    el.whoRole.hidden = !isStaff();
    document.body.dataset.role = isStaff() ? 'staff' : 'customer';
    el.rentalsTitle.textContent = t(isStaff() ? 'staffTitle' : 'rentalsTitle');
    el.rentalsEmpty.textContent = t(isStaff() ? 'rentalsEmptyStaff' : 'rentalsEmpty');
    updateContinueBar();
    pollNow();   // polling pauses while the sign-in form is shown
  }

  // Whoever is on screen now: clears everything that belonged to the last one.
  function setCustomer(name) {
    state.customer = name;
    state.rentals = new Map();
    state.rentalsLoaded = false;
    state.cancelling.clear();
    state.cancelInFlight.clear();
    state.returning.clear();
    state.rentalErrors.clear();
    state.outcome = null;
    state.retryKey = null;
    loadPending();
    renderOutcome();
    renderRentals(true);
    if (name) {
      showApp();
      renderCheckout();
    }
    restartPolling();
  }

  function signedIn(session) {
    setSession(session, true);
    el.authPassword.value = '';
    setCustomer(session.customerId);
    const heading = isStaff() ? el.rentalsTitle : el.fleetTitle;
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }

  function signOut(notice) {
    setSession(null);
    if (el.cancelDialog.open) el.cancelDialog.close();
    setCustomer(null);
    showWelcome(notice);
  }

  function sessionExpired() {
    if (!state.session) return;
    const id = state.session.customerId;
    signOut(t('sessionExpired'));
    el.authId.value = id;
    setAuthMode('signin');
    el.authPassword.focus();
  }

  function validateAuth(id, password, name) {
    if (!ID_PATTERN.test(id)) return { field: el.authId, error: t('idBad') };
    if (!password) return { field: el.authPassword, error: t('passwordEmpty') };
    if (state.authMode === 'signup' && password.length < PASSWORD_MIN) {
      return { field: el.authPassword, error: t('passwordShort', { min: PASSWORD_MIN }) };
    }
    if (name.length > NAME_MAX || /[\u0000-\u001f\u007f]/.test(name)) return { field: el.authName, error: t('nameBad') };
    return null;
  }

  function authError(field, message) {
    el.authError.textContent = message;
    if (field) {
      field.setAttribute('aria-invalid', 'true');
      field.focus();
    }
  }

  async function onAuthSubmit(ev) {
    ev.preventDefault();
    if (state.authBusy) return;
    const id = el.authId.value.trim().toLowerCase();
    const password = el.authPassword.value;
    const name = el.authName.value.trim();
    for (const f of [el.authId, el.authPassword, el.authName]) f.removeAttribute('aria-invalid');
    const wait = Math.ceil((state.authRetryUntil - Date.now()) / 1000);
    if (wait > 0) return authError(null, t('authThrottled', { s: wait }));
    const invalid = validateAuth(id, password, name);
    if (invalid) return authError(invalid.field, invalid.error);
    el.authId.value = id;
    state.authBusy = true;
    el.authError.textContent = '';
    el.authNotice.textContent = '';
    renderAuth();
    try {
      if (state.authMode === 'signup') {
        const created = await request('POST', 'accounts', { anonymous: true, body: { customerId: id, password, name: name || id } });
        if (created.status !== 201) {
          authError(created.status === 409 ? el.authId : null, serverMessage(created));
          return;
        }
      }
      const res = await request('POST', 'sessions', { anonymous: true, body: { customerId: id, password } });
      const session = res.status === 201 || res.status === 200 ? sessionFromAnswer(res.data) : null;
      if (session) {
        signedIn(session);
      } else if (res.status === 429) {
        const s = retryAfterSeconds(res.headers) || 60;
        state.authRetryUntil = Date.now() + s * 1000;
        authError(null, t('authThrottled', { s }));
      } else {
        authError(el.authPassword, serverMessage(res));
      }
    } catch (e) {
      authError(null, t('outNetworkTitle') + ' (' + t('netError') + ')');
    } finally {
      state.authBusy = false;
      renderAuth();
    }
  }

  // ---- fleet ----

  async function loadFleet() {
    if (state.fleetLoading) return;
    state.fleetLoading = true;
    try {
      const period = readPeriod();
      const query = period.error ? '' : '&from=' + period.from + '&to=' + period.to;
      const res = await request('GET', 'cars?size=100' + query);
      if (res.status !== 200) throw new Error(serverMessage(res));
      const embedded = res.data && res.data._embedded;
      const cars = embedded && Array.isArray(embedded.cars) ? embedded.cars : [];
      state.cars = cars.map((c) => ({
        id: String(c.id),
        name: String(c.name || c.id),
        location: c.location ? String(c.location) : '',
        dailyPrice: Number(c.dailyPrice) || 0,
        total: Number(c.total) || 0,
        available: Math.max(0, Number(c.available) || 0),
      }));
      state.fleetLoaded = true;
      state.fleetError = null;
    } catch (e) {
      state.fleetError = e.name === 'AbortError' || e instanceof TypeError ? t('netError') : e.message;
    } finally {
      state.fleetLoading = false;
    }
    if (state.selectedId && !carById(state.selectedId)) state.selectedId = null;
    renderFleet();
    renderCheckout();
    renderRentals(false);
  }

  function scheduleFleetRefresh() {
    clearTimeout(fleetTimer.id);
    fleetTimer.id = setTimeout(async () => {
      if (!document.hidden) await loadFleet();
      scheduleFleetRefresh();
    }, FLEET_REFRESH_MS);
  }

  function availabilityClass(car) {
    if (car.available <= 0) return 'car-avail none';
    // "Few left": a quarter or less of the model's cars, not a model that only has one.
    if (car.available < car.total && car.available <= Math.max(1, Math.floor(car.total / 4))) return 'car-avail low';
    return 'car-avail';
  }

  // The fleet is rendered once per car and updated in place, so a refresh
  // never steals keyboard focus from the radio the customer is on.
  const carNodes = new Map();

  function buildCarNode(car) {
    const input = h('input', { type: 'radio', name: 'productId', value: car.id, id: 'car-' + car.id });
    const parts = {
      input,
      name: h('span', { className: 'car-name' }),
      where: h('span', { className: 'car-where-text' }),
      price: h('span', { className: 'car-price' }),
      avail: h('span', { className: 'car-avail' }),
      meterFill: h('span'),
    };
    const label = h('label', { className: 'car', for: input.id, 'data-car-id': car.id }, [
      input,
      h('span', { className: 'car-icon' }, icon('car')),
      h('span', { className: 'car-info' }, [
        parts.name,
        h('span', { className: 'car-where' }, [icon('pin'), parts.where]),
      ]),
      h('span', { className: 'car-check' }, icon('check')),
      h('span', { className: 'car-bottom' }, [parts.price, parts.avail]),
      h('span', { className: 'meter', 'aria-hidden': 'true' }, parts.meterFill),
    ]);
    input.addEventListener('change', () => {
      if (input.checked) selectCar(car.id);
    });
    label._parts = parts;
    return label;
  }

  function updateCarNode(node, car) {
    const p = node._parts;
    p.name.textContent = car.name;
    p.where.textContent = car.location;
    p.price.replaceChildren(money(car.dailyPrice), ' ', h('small', { text: t('perDay') }));
    p.avail.className = availabilityClass(car);
    // "Free on these dates" once the customer chose other dates than today.
    const period = readPeriod();
    const dated = !period.error && !(period.from === companyToday() && period.days === 1);
    p.avail.textContent = car.available > 0 ? t(dated ? 'availOfDates' : 'availOf', car) : t(dated ? 'soldOutDates' : 'soldOut');
    p.meterFill.style.width = (car.total > 0 ? Math.round((100 * car.available) / car.total) : 0) + '%';
    p.input.disabled = car.available <= 0 && state.selectedId !== car.id;
    p.input.checked = state.selectedId === car.id;
  }

  function renderFleet() {
    if (!el.fleet) return;
    el.fleet.setAttribute('aria-busy', state.fleetLoaded || state.fleetError ? 'false' : 'true');
    if (!state.fleetLoaded) {
      carNodes.clear();
      if (state.fleetError) {
        el.fleet.replaceChildren(h('div', { className: 'fleet-error', role: 'alert' }, [
          h('span', { text: t('fleetError', { reason: state.fleetError }) }),
          h('button', { type: 'button', className: 'button ghost small', text: t('retry'), onclick: loadFleet }),
        ]));
      } else {
        el.fleet.replaceChildren(h('p', { className: 'muted loading', text: t('loadingCars') }));
      }
      return;
    }
    if (state.cars.length === 0) {
      carNodes.clear();
      el.fleet.replaceChildren(h('p', { className: 'muted loading', text: t('fleetEmpty') }));
      return;
    }
    // Drop the placeholder text and cars that left the fleet; keep the rest.
    for (const child of Array.from(el.fleet.children)) {
      const id = child.dataset && child.dataset.carId;
      if (!id || !carById(id)) {
        if (id) carNodes.delete(id);
        child.remove();
      }
    }
    let previous = null;
    for (const car of state.cars) {
      let node = carNodes.get(car.id);
      if (!node) {
        node = buildCarNode(car);
        carNodes.set(car.id, node);
      }
      updateCarNode(node, car);
      const wanted = previous ? previous.nextSibling : el.fleet.firstChild;
      if (wanted !== node) el.fleet.insertBefore(node, wanted);
      previous = node;
    }
  }

  function selectCar(id) {
    state.selectedId = id;
    const car = carById(id);
    if (car) el.qty.value = String(Math.min(Math.max(1, readQtyRaw() || 1), Math.max(1, car.available)));
    clearFieldError(el.qty, el.qtyHint);
    renderFleet();
    renderCheckout();
  }

  // ---- checkout ----

  function readQtyRaw() {
    const v = String(el.qty.value).trim();
    return /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
  }

  function cardDigits() {
    return el.card.value.replace(/[\s-]/g, '');
  }

  function clearFieldError(input, hint) {
    input.removeAttribute('aria-invalid');
    hint.classList.remove('error');
  }
  function showFieldError(input, hint, message) {
    input.setAttribute('aria-invalid', 'true');
    hint.classList.add('error');
    hint.textContent = message;
  }

  function waitSeconds() {
    return Math.max(0, Math.ceil((state.retryUntil - Date.now()) / 1000));
  }

  function renderCheckout() {
    if (!el.selected) return;
    const car = carById(state.selectedId);
    const qty = readQtyRaw();
    if (car) {
      el.selected.classList.add('chosen');
      el.selected.replaceChildren(
        h('span', { className: 'car-icon' }, icon('car')),
        h('span', { className: 'selected-text' }, [
          h('strong', { text: car.name }),
          h('span', { className: 'muted', text: [car.location, money(car.dailyPrice) + ' ' + t('perDay')].filter(Boolean).join(' · ') }),
        ]),
      );
    } else {
      el.selected.classList.remove('chosen');
      el.selected.replaceChildren(h('p', { className: 'muted', text: t('noneSelected') }));
    }
    const max = car ? car.available : 0;
    el.qty.max = String(Math.max(1, max));
    el.qtyMinus.disabled = !car || !(qty > 1);
    el.qtyPlus.disabled = !car || !(qty < max);
    if (!el.qtyHint.classList.contains('error')) {
      el.qtyHint.textContent = car ? (max > 0 ? t('qtyHint', { max }) : t('soldOut')) : t('qtyHintNone');
    }
    const period = readPeriod();
    if (!el.datesHint.classList.contains('error')) {
      el.datesHint.textContent = period.error ? period.message
        : t(period.days === 1 ? 'periodHintOne' : 'periodHint', { days: period.days, to: formatDay(period.to) });
    }
    el.daysMinus.disabled = period.error === 'days' || !(period.days > 1);
    el.daysPlus.disabled = period.error === 'days' || !(period.days < MAX_DAYS);
    el.totalLabel.textContent = period.error ? t('totalLabel')
      : t(period.days === 1 ? 'totalForOne' : 'totalFor', { days: period.days });
    const validQty = car && qty >= 1 && qty <= max;
    const amount = validQty && !period.error ? qty * period.days * car.dailyPrice : null;
    el.total.textContent = amount === null ? '—' : money(amount);

    const wait = waitSeconds();
    // In flight: really disabled (a second press cannot even be clicked).
    // Waiting out Retry-After: aria-disabled, so keyboard focus stays on the
    // button and the customer can press again as soon as it says so.
    el.rentButton.disabled = state.renting || !car || max <= 0 || !state.customer;
    if (wait > 0) el.rentButton.setAttribute('aria-disabled', 'true');
    else el.rentButton.removeAttribute('aria-disabled');
    el.rentButton.setAttribute('aria-busy', state.renting ? 'true' : 'false');
    if (state.renting) el.rentLabel.textContent = t('renting');
    else if (wait > 0) el.rentLabel.textContent = t('waitButton', { s: wait });
    else el.rentLabel.textContent = amount === null ? t('rentButtonNone') : t('rentButton', { amount: money(amount) });
    updateContinueBar();
  }

  function stepQty(delta) {
    const car = carById(state.selectedId);
    if (!car) return;
    const current = readQtyRaw() || 1;
    el.qty.value = String(Math.min(Math.max(1, current + delta), Math.max(1, car.available)));
    clearFieldError(el.qty, el.qtyHint);
    renderCheckout();
  }

  // Ticks the "try again in N s" label after a 503 with Retry-After.
  let waitTicker = null;
  function startWaitTicker() {
    clearInterval(waitTicker);
    waitTicker = setInterval(() => {
      renderCheckout();
      if (waitSeconds() <= 0) {
        clearInterval(waitTicker);
        waitTicker = null;
      }
    }, 500);
  }

  async function onRentSubmit(ev) {
    ev.preventDefault();
    if (state.renting || waitSeconds() > 0) return;
    const car = carById(state.selectedId);
    if (!car) {
      const first = el.fleet.querySelector('input:not(:disabled)');
      if (first) first.focus();
      return;
    }
    const qty = readQtyRaw();
    if (!(qty >= 1 && qty <= car.available)) {
      showFieldError(el.qty, el.qtyHint, t('qtyInvalid', { max: car.available }));
      el.qty.focus();
      return;
    }
    const period = readPeriod();
    if (period.error) {
      const input = period.error === 'from' ? el.fromDate : el.days;
      showFieldError(input, el.datesHint, period.message);
      input.focus();
      return;
    }
    const card = cardDigits();
    if (card && !/^\d{12,19}$/.test(card)) {
      showFieldError(el.card, el.cardHint, t('cardInvalid'));
      el.card.focus();
      return;
    }
    const body = { productId: car.id, qty, customerId: state.session ? state.session.customerId : state.customer,
      from: period.from, to: period.to };
    if (card) body.cardNumber = card;
    const signature = JSON.stringify(body);
    const key = state.retryKey && state.retryKey.signature === signature ? state.retryKey.key : newIdempotencyKey();
    state.retryKey = null;

    const hadFocus = document.activeElement === el.rentButton;
    state.renting = true;
    state.outcome = null;
    renderOutcome();
    renderCheckout();
    let res = null;
    try {
      res = await request('POST', 'orders', { body, headers: { 'Idempotency-Key': key }, timeout: RENT_TIMEOUT_MS });
    } catch (e) {
      // No answer: the rental may or may not exist. Keep the key, so that
      // pressing again with the same choices returns the first outcome.
      state.retryKey = { key, signature };
      state.outcome = { kind: 'network' };
    } finally {
      state.renting = false;
    }
    if (res) handleRentAnswer(res, car, qty, period);
    renderOutcome();
    renderCheckout();
    if (hadFocus && (document.activeElement === document.body || !document.activeElement)) el.rentButton.focus();
  }

  function handleRentAnswer(res, car, qty, period) {
    const message = serverMessage(res);
    if (res.status === 201 || res.status === 200) {
      const order = res.data && typeof res.data === 'object' ? res.data : {};
      const orderId = order.id !== undefined ? String(order.id) : null;
      const amount = order.amount !== undefined ? Number(order.amount) : qty * period.days * car.dailyPrice;
      const from = String(order.from || period.from), to = String(order.to || period.to);
      state.outcome = { kind: 'approved', orderId, amount, from, to, days: Number(order.days) || period.days };
      if (orderId && !state.rentals.has(orderId)) {
        state.pending.set(orderId, {
          orderId, productId: String(order.productId || car.id), qty: Number(order.qty) || qty, amount,
          from, to, days: Number(order.days) || period.days, createdAt: Date.now(),
        });
        savePending();
      }
      el.qty.value = '1';
      renderRentals(false);
      pollNow();
      loadFleet();
    } else if (res.status === 402) {
      state.outcome = { kind: 'declined', message };
    } else if (res.status === 503) {
      const seconds = retryAfterSeconds(res.headers);
      state.outcome = { kind: 'busy', message, seconds };
      if (seconds > 0) {
        state.retryUntil = Date.now() + seconds * 1000;
        startWaitTicker();
      }
    } else if (res.status === 409) {
      state.outcome = { kind: 'conflict', message };
      loadFleet();
    } else if (res.status === 404) {
      state.outcome = { kind: 'notfound', message };
      loadFleet();
    } else if (res.status === 400 || res.status === 413 || res.status === 422) {
      state.outcome = { kind: 'invalid', message };
    } else {
      state.outcome = { kind: 'error', status: res.status, message };
    }
  }

  function renderOutcome() {
    if (!el.outcome) return;
    const o = state.outcome;
    if (!o) {
      el.outcome.replaceChildren();
      return;
    }
    const parts = [];
    let iconName = 'alert';
    let kind = o.kind;
    switch (o.kind) {
      case 'approved':
        iconName = 'ok';
        parts.push(h('p', { className: 'outcome-title', text: t('outApprovedTitle') }));
        parts.push(h('p', { className: 'outcome-detail', 'data-order-id': o.orderId,
          text: t('outApprovedDetail', { id: o.orderId || '?', amount: money(o.amount) }) }));
        if (o.from && o.to) parts.push(h('p', { className: 'outcome-detail period', text: periodText(o.from, o.to, o.days) }));
        parts.push(h('p', { className: 'outcome-detail' }, [
          t('outApprovedNext') + ' ',
          h('a', { href: '#rentals-section', text: t('seeRentals'), onclick: goToRentals }),
        ]));
        break;
      case 'declined':
        parts.push(h('p', { className: 'outcome-title', text: t('outDeclinedTitle') }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
        parts.push(h('p', { className: 'outcome-detail', text: t('outDeclinedNext') }));
        break;
      case 'busy':
        iconName = 'clock';
        parts.push(h('p', { className: 'outcome-title', text: t('outBusyTitle') }));
        parts.push(h('p', { className: 'outcome-detail', text: t('outBusyNext') +
          (o.seconds > 0 ? ' ' + t('outRetryAfter', { s: o.seconds }) : '') }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
        break;
      case 'conflict':
        parts.push(h('p', { className: 'outcome-title', text: t('outConflictTitle') }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
        parts.push(h('p', { className: 'outcome-detail', text: t('outConflictNext') }));
        break;
      case 'notfound':
        kind = 'invalid';
        parts.push(h('p', { className: 'outcome-title', text: t('outNotFoundTitle') }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
        break;
      case 'invalid':
        parts.push(h('p', { className: 'outcome-title', text: t('outInvalidTitle') }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
        break;
      case 'network':
        parts.push(h('p', { className: 'outcome-title', text: t('outNetworkTitle') }));
        parts.push(h('p', { className: 'outcome-detail', text: t('outNetworkNext') }));
        break;
      default:
        parts.push(h('p', { className: 'outcome-title', text: t('outErrorTitle', { status: o.status }) }));
        parts.push(h('p', { className: 'outcome-detail server', text: o.message }));
    }
    el.outcome.replaceChildren(h('div', { className: 'outcome', 'data-outcome': kind }, [icon(iconName, 'outcome-icon'), ...parts]));
  }

  function goToRentals(ev) {
    ev.preventDefault();
    el.rentalsSection.scrollIntoView({ behavior: 'smooth', block: 'start' });
    el.rentalsTitle.setAttribute('tabindex', '-1');
    el.rentalsTitle.focus({ preventScroll: true });
  }

  // ---- the phone's "continue" bar ----

  const view = { fleetVisible: false, checkoutVisible: true };
  const narrow = window.matchMedia('(max-width: 959px)');

  function updateContinueBar() {
    if (!el.continueBar) return;
    const car = carById(state.selectedId);
    const show = !!car && narrow.matches && !el.app.hidden && view.fleetVisible && !view.checkoutVisible;
    el.continueBar.hidden = !show;
    if (show) el.continueText.textContent = `${car.name} · ${money(car.dailyPrice)} ${t('perDay')}`;
  }

  function watchSections() {
    if (!('IntersectionObserver' in window)) return;
    const observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.target === el.checkout) view.checkoutVisible = entry.isIntersecting;
        else view.fleetVisible = entry.isIntersecting;
      }
      updateContinueBar();
    }, { threshold: 0 });
    observer.observe(el.checkout);
    observer.observe(el.fleetSection);
    narrow.addEventListener('change', updateContinueBar);
  }

  // ---- processing placeholders (orders approved, not yet in the view) ----

  function pendingKey() { return 'carshare.pending.' + state.customer; }

  function loadPending() {
    state.pending = new Map();
    if (!state.customer) return;
    try {
      const list = JSON.parse(storageGet(pendingKey()) || '[]');
      const now = Date.now();
      for (const p of Array.isArray(list) ? list : []) {
        if (p && p.orderId && now - Number(p.createdAt) < PENDING_TTL_MS) state.pending.set(String(p.orderId), p);
      }
    } catch (e) { /* a damaged entry is just forgotten */ }
  }

  function savePending() {
    if (!state.customer) return;
    const list = Array.from(state.pending.values());
    storageSet(pendingKey(), list.length ? JSON.stringify(list) : null);
  }

  // ---- My rentals: polling ----

  function setLive(mode) {
    el.live.dataset.state = mode || 'idle';
    el.liveText.textContent = mode === 'live' ? t('liveOn') : mode === 'retrying' ? t('liveRetry')
      : mode === 'paused' ? t('livePaused') : '';
  }

  function restartPolling() {
    poll.gen += 1;
    poll.failures = 0;
    poll.again = false;
    if (poll.controller) poll.controller.abort();
    poll.controller = null;
    clearTimeout(poll.timer);
    poll.timer = setTimeout(pollOnce, 0);
  }

  // Asks for a poll as soon as possible, without ever running two at once.
  function pollNow() {
    if (poll.controller) {
      poll.again = true;
      return;
    }
    clearTimeout(poll.timer);
    poll.timer = setTimeout(pollOnce, 0);
  }

  function schedulePoll(ms) {
    clearTimeout(poll.timer);
    poll.timer = setTimeout(pollOnce, ms);
  }

  async function pollOnce() {
    poll.timer = null;
    if (!state.session || el.app.hidden) return;           // restarted when the app shows
    if (document.hidden) { setLive('paused'); return; }     // resumed on visibilitychange
    if (poll.controller) return;                            // one at a time
    const gen = poll.gen;
    const controller = new AbortController();
    poll.controller = controller;
    let delay = POLL_MS;
    try {
      const path = isStaff() ? 'customerpages?size=200'
        : 'customerpages/search/findByCustomerId?customerId=' + encodeURIComponent(state.customer) + '&size=200';
      const res = await request('GET', path, { signal: controller.signal });
      if (gen !== poll.gen) return;
      if (res.status === 401) return;                       // signed out by request()
      if (res.status !== 200) throw new Error(serverMessage(res));
      const embedded = res.data && res.data._embedded;
      const items = embedded && Array.isArray(embedded.customerpages) ? embedded.customerpages : [];
      poll.failures = 0;
      el.notice.textContent = '';
      el.notice.removeAttribute('data-kind');
      setLive('live');
      applyRentals(items);
    } catch (e) {
      if (gen !== poll.gen) return;
      poll.failures += 1;
      // Exponential backoff with jitter, so many pages do not retry in step.
      delay = Math.min(POLL_MAX_MS, POLL_MS * 2 ** poll.failures) * (0.8 + Math.random() * 0.4);
      const reason = e.name === 'AbortError' || e instanceof TypeError ? t('netError') : e.message;
      el.notice.dataset.kind = 'error';
      el.notice.textContent = t('rentalsError', { reason, s: Math.round(delay / 1000) });
      setLive('retrying');
    } finally {
      if (poll.controller === controller) poll.controller = null;
      if (gen === poll.gen) {
        if (poll.again) {
          poll.again = false;
          delay = 0;
        }
        schedulePoll(delay);
      }
    }
  }

  function applyRentals(items) {
    const next = new Map();
    for (const item of items) {
      if (!item || item.orderId === undefined || item.orderId === null) continue;
      next.set(String(item.orderId), item);
    }
    let statusChanged = false;
    for (const [id, item] of next) {
      const before = state.rentals.get(id);
      if (before && before.status !== item.status) {
        statusChanged = true;
        announce(t('statusNow', { id, status: statusLabel(item.status) }));
        state.rentalErrors.delete(id);
      }
      if (!before && state.rentalsLoaded && !state.pending.has(id)) statusChanged = true;
      if (state.pending.delete(id)) savePending();
      const info = STATUSES[item.status];
      if (info && info.rank >= CANCELLED_RANK) state.cancelling.delete(id);
      if (info && info.rank >= RETURNED_RANK) {
        state.returning.delete(id);
        // "Your car is on its way" is no longer true once it is returned or cancelled.
        if (state.outcome && state.outcome.kind === 'approved' && state.outcome.orderId === id) {
          state.outcome = null;
          renderOutcome();
        }
      }
    }
    state.rentals = next;
    state.rentalsLoaded = true;
    renderRentals(false);
    if (statusChanged) loadFleet();   // cancellations give cars back
  }

  function announce(text) {
    el.announcer.textContent = '';
    // A fresh text node so that repeated messages are announced again.
    setTimeout(() => { el.announcer.textContent = text; }, 50);
  }

  // ---- My rentals: rendering ----

  function statusLabel(status) {
    const info = STATUSES[status];
    return info ? t(info.key) : String(status || '');
  }

  function sortIds(ids) {
    return ids.sort((a, b) => {
      const na = Number(a), nb = Number(b);
      if (Number.isFinite(na) && Number.isFinite(nb)) return nb - na;
      return String(b).localeCompare(String(a));
    });
  }

  const rentalNodes = new Map();

  // Rebuilds the cards whose content changed, keeps the others untouched,
  // and keeps keyboard focus where it was.
  function renderRentals(force) {
    if (!el.rentals) return;
    const entries = [];
    for (const id of sortIds(Array.from(state.pending.keys()).filter((id) => !state.rentals.has(id)))) {
      entries.push({ id, kind: 'pending', data: state.pending.get(id) });
    }
    for (const id of sortIds(Array.from(state.rentals.keys()))) {
      entries.push({ id, kind: 'rental', data: state.rentals.get(id) });
    }
    const wanted = new Set(entries.map((e) => e.id));
    for (const [id, node] of rentalNodes) {
      if (!wanted.has(id)) {
        node.remove();
        rentalNodes.delete(id);
      }
    }
    let previous = null;
    for (const entry of entries) {
      const signature = rentalSignature(entry);
      let node = rentalNodes.get(entry.id);
      if (!node) {
        node = h('li', { className: 'rental', tabindex: '-1' });
        rentalNodes.set(entry.id, node);
      }
      if (force || node._signature !== signature) {
        const focusKey = node.contains(document.activeElement)
          ? (document.activeElement.dataset.focusKey || 'self') : null;
        fillRental(node, entry);
        node._signature = signature;
        if (focusKey) {
          const target = focusKey === 'self' ? node : node.querySelector(`[data-focus-key="${focusKey}"]`);
          (target || node).focus({ preventScroll: true });
        }
      }
      const place = previous ? previous.nextSibling : el.rentals.firstChild;
      if (place !== node) el.rentals.insertBefore(node, place);
      previous = node;
    }
    el.rentals.setAttribute('aria-busy', state.rentalsLoaded ? 'false' : 'true');
    el.rentalsEmpty.hidden = !(state.rentalsLoaded && entries.length === 0);
  }

  function rentalSignature(entry) {
    const id = entry.id;
    const slow = entry.kind === 'pending' && Date.now() - entry.data.createdAt > PENDING_SLOW_MS;
    return JSON.stringify([entry.kind, entry.data, state.lang, carName(entry.data.productId),
      state.cancelling.has(id), state.cancelInFlight.has(id), state.returning.has(id),
      state.rentalErrors.get(id) || '', slow]);
  }

  function fillRental(node, entry) {
    const id = entry.id;
    const d = entry.data;
    const titleId = 'rental-title-' + id;
    node.dataset.orderId = id;
    node.setAttribute('aria-labelledby', titleId);
    const title = h('h3', { id: titleId, text: t('carTimes', { name: carName(d.productId), qty: d.qty || 1 }) });

    if (entry.kind === 'pending') {
      node.dataset.status = 'processing';
      const slow = Date.now() - d.createdAt > PENDING_SLOW_MS;
      node.replaceChildren(
        h('div', { className: 'rental-head' }, [
          h('div', { className: 'rental-title' }, [title, h('span', { className: 'rental-meta', text: t('orderNo', { id }) })]),
          h('span', { className: 'badge', 'data-tone': 'busy', text: t('stProcessing') }),
        ]),
        d.from && d.to ? h('p', { className: 'rental-period', text: periodText(d.from, d.to, d.days) }) : null,
        h('p', { className: 'muted', text: slow ? t('processingSlow') : t('processingText') }),
        h('div', { className: 'rental-foot' }, h('span', { className: 'rental-amount', text: money(d.amount) })),
      );
      return;
    }

    const status = String(d.status || '');
    const info = STATUSES[status];
    const cancelling = state.cancelling.has(id) && !(info && info.rank >= CANCELLED_RANK);
    node.dataset.status = status;
    if (cancelling) node.dataset.local = 'cancelling';
    else delete node.dataset.local;

    const history = Array.isArray(d.history) ? d.history : [];
    const first = history.length ? parseStamp(history[0].timestamp) : null;
    const meta = [t('orderNo', { id })];
    if (first) meta.push(t('rentedAt', { time: formatTime(first) }));

    const returning = state.returning.has(id) && !(info && info.rank >= RETURNED_RANK);
    const badge = cancelling || returning
      ? h('span', { className: 'badge', 'data-tone': 'busy', text: t(cancelling ? 'stCancelling' : 'stReturning') })
      : h('span', { className: 'badge', 'data-tone': info ? info.tone : 'neutral', text: statusLabel(status) });

    const historyList = h('ol', { className: 'history', 'aria-label': t('historyLabel') },
      history.map((step) => {
        const when = parseStamp(step.timestamp);
        const labelKey = EVENT_LABELS[step.eventType] || EVENT_LABELS[step.status];
        return h('li', { 'data-event-type': step.eventType || '', 'data-status': step.status || '' }, [
          h('span', null, [
            h('span', { className: 'ev-label', text: labelKey ? t(labelKey) : String(step.eventType || step.status || '') }),
            h('span', { className: 'ev-code', text: step.eventType || '' }),
          ]),
          when ? h('time', { datetime: when.toISOString(), title: formatTime(when), text: formatStepTime(when) }) : h('span'),
        ]);
      }));

    const facts = isStaff() ? rentalFacts(d, status) : null;
    // Active (confirmed or delivered) rentals can be returned or cancelled;
    // a returned one has ended, a cancelled one never happened.
    const active = info && info.rank < RETURNED_RANK && !cancelling && !returning;
    const canCancel = active;
    const canReturn = active;
    const amountText = [money(d.amount)];
    if (status === 'PaymentCancelled') amountText.push(h('span', { className: 'muted', text: ' · ' + t('refunded') }));
    const error = state.rentalErrors.get(id);
    fill(node,
      h('div', { className: 'rental-head' }, [
        h('div', { className: 'rental-title' }, [title, h('span', { className: 'rental-meta', text: meta.join(' · ') })]),
        badge,
      ]),
      facts,
      d.from && d.to ? h('p', { className: 'rental-period', text: periodText(d.from, d.to, d.days) }) : null,
      history.length ? historyList : null,
      h('div', { className: 'rental-foot' }, [
        h('span', { className: 'rental-amount' }, amountText),
        canReturn || canCancel ? h('span', { className: 'rental-actions' }, [
          canReturn ? h('button', {
            type: 'button', className: 'button small', 'data-focus-key': 'return', 'data-action': 'return',
            disabled: state.returning.has(id), text: t('returnButton'),
            onclick: () => openReturnDialog(id),
          }) : null,
          canCancel ? h('button', {
            type: 'button', className: 'button ghost small', 'data-focus-key': 'cancel', 'data-action': 'cancel',
            disabled: state.cancelInFlight.has(id), text: t('cancelButton'),
            onclick: () => openCancelDialog(id),
          }) : null,
        ]) : null,
      ]),
      error ? h('p', { className: 'rental-error', role: 'alert', text: error }) : null,
    );
  }

  // Staff see whose rental it is and where its payment and delivery stand,
  // from the read model's status and history (the contract's steps).
  function rentalFacts(d, status) {
    const steps = new Set((Array.isArray(d.history) ? d.history : []).map((x) => x.eventType || x.status));
    const refunded = status === 'PaymentCancelled' || steps.has('PayCancelled');
    const payment = refunded ? t('payRefunded') : d.paymentId ? t('payPaid') : t('payNone');
    const cancelled = status === 'DeliveryCancelled' || status === 'PaymentCancelled' || steps.has('DeliveryCanceled');
    const delivery = cancelled ? t('delCancelled') : (status === 'Returned' || steps.has('Returned')) ? t('delReturned')
      : (status === 'Shipped' || steps.has('Shipped') || d.deliveryId) ? t('delShipped') : t('delPending');
    const fact = (label, value, key) => h('div', { 'data-fact': key }, [h('dt', { text: label }), h('dd', { text: value })]);
    return h('dl', { className: 'rental-facts' }, [
      fact(t('factCustomer'), String(d.customerId || '—'), 'customer'),
      fact(t('factPayment'), payment, 'payment'),
      fact(t('factDelivery'), delivery, 'delivery'),
    ]);
  }

  // ---- cancel ----

  function openCancelDialog(orderId) {
    const d = state.rentals.get(orderId);
    if (!d) return;
    state.dialogOrderId = orderId;
    el.cancelText.textContent = t('cancelText', {
      car: t('carTimes', { name: carName(d.productId), qty: d.qty || 1 }), id: orderId, amount: money(d.amount),
    });
    el.cancelDialog.returnValue = '';
    el.cancelDialog.showModal();
  }

  function onCancelDialogClose() {
    const orderId = state.dialogOrderId;
    state.dialogOrderId = null;
    if (orderId && el.cancelDialog.returnValue === 'cancel') cancelRental(orderId);
  }

  async function cancelRental(orderId) {
    state.cancelInFlight.add(orderId);
    state.rentalErrors.delete(orderId);
    renderRentals(false);
    try {
      const res = await request('DELETE', 'orders/' + encodeURIComponent(orderId));
      if (res.status === 204 || res.status === 200 || res.status === 202) {
        state.cancelling.add(orderId);
        announce(t('cancelSent', { id: orderId }));
        pollNow();
      } else {
        state.rentalErrors.set(orderId, t('cancelFailed', { reason: serverMessage(res) }));
      }
    } catch (e) {
      state.rentalErrors.set(orderId, t('cancelFailed', { reason: t('netError') }));
    } finally {
      state.cancelInFlight.delete(orderId);
    }
    renderRentals(false);
  }

  // ---- return ----

  function openReturnDialog(orderId) {
    const d = state.rentals.get(orderId);
    if (!d) return;
    state.returnDialogOrderId = orderId;
    el.returnText.textContent = t('returnText', {
      car: t('carTimes', { name: carName(d.productId), qty: d.qty || 1 }), id: orderId,
      period: d.from && d.to ? periodText(d.from, d.to, d.days) : '—',
    });
    el.returnDialog.returnValue = '';
    el.returnDialog.showModal();
  }

  function onReturnDialogClose() {
    const orderId = state.returnDialogOrderId;
    state.returnDialogOrderId = null;
    if (orderId && el.returnDialog.returnValue === 'return') returnRental(orderId);
  }

  // Returning twice is harmless (the server answers 200 with no new
  // effect), so a retry after a lost answer is always safe.
  async function returnRental(orderId) {
    state.returning.add(orderId);
    state.rentalErrors.delete(orderId);
    renderRentals(false);
    try {
      const res = await request('POST', 'orders/' + encodeURIComponent(orderId) + '/return');
      if (res.status === 200) {
        announce(t('returnSent', { id: orderId }));
        pollNow();
        loadFleet();
      } else {
        state.returning.delete(orderId);
        state.rentalErrors.set(orderId, t('returnFailed', { reason: serverMessage(res) }));
      }
    } catch (e) {
      state.returning.delete(orderId);
      state.rentalErrors.set(orderId, t('returnFailed', { reason: t('netError') }));
    }
    renderRentals(false);
  }

  // ---- dates: inputs ----

  let fleetReload = null;
  function onPeriodInput(input) {
    clearFieldError(input, el.datesHint);
    state.from = el.fromDate.value;
    state.days = el.days.value;
    renderCheckout();
    // Availability for the new dates, once the customer pauses.
    clearTimeout(fleetReload);
    fleetReload = setTimeout(() => { if (!readPeriod().error) loadFleet(); else renderFleet(); }, 250);
  }

  function stepDays(delta) {
    const current = parseInt(el.days.value, 10) || 1;
    el.days.value = String(Math.min(Math.max(1, current + delta), MAX_DAYS));
    onPeriodInput(el.days);
  }

  function initPeriod() {
    const today = companyToday();
    el.fromDate.min = today;
    el.fromDate.max = addDays(today, MAX_AHEAD_DAYS);
    if (!el.fromDate.value || isoDay(el.fromDate.value) === null || el.fromDate.value < today) el.fromDate.value = today;
    el.days.max = String(MAX_DAYS);
    state.from = el.fromDate.value;
    state.days = el.days.value;
  }

  // ---- start ----

  function bind() {
    const ids = {
      welcome: 'welcome', app: 'app', who: 'who', whoName: 'who-name', whoRole: 'who-role', signOut: 'sign-out',
      authNotice: 'auth-notice', modeSignin: 'mode-signin', modeSignup: 'mode-signup', authForm: 'auth-form',
      authId: 'auth-id', authIdHint: 'auth-id-hint', nameField: 'name-field', authName: 'auth-name',
      authPassword: 'auth-password', authPasswordHint: 'auth-password-hint', authError: 'auth-error',
      authSubmit: 'auth-submit', authSubmitLabel: 'auth-submit-label',
      langToggle: 'lang-toggle', langLabel: 'lang-toggle-label', langShort: 'lang-toggle-short',
      fleet: 'fleet', fleetSection: 'fleet-section', fleetTitle: 'fleet-title', rentForm: 'rent-form',
      checkout: 'checkout', selected: 'selected-summary', qty: 'qty', qtyMinus: 'qty-minus', qtyPlus: 'qty-plus',
      qtyHint: 'qty-hint', card: 'card', cardHint: 'card-hint', total: 'total', rentButton: 'rent-button',
      rentLabel: 'rent-label', outcome: 'outcome', totalLabel: 'total-label',
      fromDate: 'from-date', days: 'days', daysMinus: 'days-minus', daysPlus: 'days-plus', datesHint: 'dates-hint',
      returnDialog: 'return-dialog', returnText: 'return-text',
      rentalsSection: 'rentals-section', rentalsTitle: 'rentals-title', rentals: 'rentals',
      rentalsEmpty: 'rentals-empty', notice: 'rentals-notice', live: 'live', liveText: 'live-text',
      announcer: 'announcer', cancelDialog: 'cancel-dialog', cancelText: 'cancel-text',
      continueBar: 'continue-bar', continueText: 'continue-text', continueLink: 'continue-link',
    };
    for (const [name, id] of Object.entries(ids)) el[name] = $(id);

    el.authForm.addEventListener('submit', onAuthSubmit);
    for (const f of [el.authId, el.authPassword, el.authName]) {
      f.addEventListener('input', () => {
        el.authError.textContent = '';
        f.removeAttribute('aria-invalid');
      });
    }
    el.modeSignin.addEventListener('click', () => setAuthMode('signin'));
    el.modeSignup.addEventListener('click', () => setAuthMode('signup'));
    el.signOut.addEventListener('click', () => signOut(t('signedOut')));
    el.langToggle.addEventListener('click', () => applyLanguage(state.lang === 'ko' ? 'en' : 'ko'));

    el.rentForm.addEventListener('submit', onRentSubmit);
    el.qtyMinus.addEventListener('click', () => stepQty(-1));
    el.qtyPlus.addEventListener('click', () => stepQty(+1));
    el.qty.addEventListener('input', () => {
      clearFieldError(el.qty, el.qtyHint);
      renderCheckout();
    });
    el.card.addEventListener('input', () => {
      clearFieldError(el.card, el.cardHint);
      el.cardHint.textContent = t('cardHint');
    });
    // Groups the digits by four once the customer leaves the field; typing is left alone.
    el.card.addEventListener('blur', () => {
      const digits = cardDigits();
      if (/^\d{12,19}$/.test(digits)) el.card.value = digits.replace(/(\d{4})(?=\d)/g, '$1 ');
    });
    el.cancelDialog.addEventListener('close', onCancelDialogClose);
    el.returnDialog.addEventListener('close', onReturnDialogClose);
    el.fromDate.addEventListener('input', () => onPeriodInput(el.fromDate));
    el.fromDate.addEventListener('change', () => onPeriodInput(el.fromDate));
    el.days.addEventListener('input', () => onPeriodInput(el.days));
    el.daysMinus.addEventListener('click', () => stepDays(-1));
    el.daysPlus.addEventListener('click', () => stepDays(+1));
    el.continueLink.addEventListener('click', (ev) => {
      ev.preventDefault();
      el.checkout.scrollIntoView({ behavior: 'smooth', block: 'start' });
      el.qty.focus({ preventScroll: true });
    });

    document.addEventListener('visibilitychange', () => {
      if (document.hidden) {
        clearTimeout(poll.timer);
        setLive('paused');
      } else {
        pollNow();
        loadFleet();
      }
    });
    // Let "processing…" turn into "still confirming…" without a poll answer.
    setInterval(() => { if (state.pending.size) renderRentals(false); }, 5000);
  }

  function start() {
    bind();
    initPeriod();
    const savedLang = storageGet('carshare.lang');
    const browserLang = (navigator.language || 'en').toLowerCase().startsWith('ko') ? 'ko' : 'en';
    storageSet('carshare.customer', null);   // an earlier version kept a name here
    const saved = restoreSession();
    applyLanguage(savedLang && STRINGS[savedLang] ? savedLang : browserLang);
    setAuthMode('signin');
    watchSections();
    if (saved && saved !== 'expired') {
      setSession(saved, false);
      setCustomer(saved.customerId);
    } else {
      showWelcome(saved === 'expired' ? t('sessionExpired') : '');
    }
    loadFleet();
    scheduleFleetRefresh();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
